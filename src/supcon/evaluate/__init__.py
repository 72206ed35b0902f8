"""Evaluation of trained runs: kNN accuracy, t-SNE pictures, training curves, robustness (corruptions,
adversarial attacks, margins and calibration), and ``predict`` (a finished run classifying new images:
``supcon.load_run``)."""
