"""Evaluation of trained runs: embeddings pictured with t-SNE (more to come: kNN, robustness)."""
