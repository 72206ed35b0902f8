"""Evaluation of trained runs: kNN accuracy, t-SNE pictures, training curves, and ``predict`` (a finished run
classifying new images: ``supcon.load_run``)."""
