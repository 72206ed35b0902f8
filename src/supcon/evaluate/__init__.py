"""Evaluation of trained models: kNN accuracy, t-SNE pictures, training curves, and robustness (corruptions,
adversarial attacks, margins and calibration)."""
