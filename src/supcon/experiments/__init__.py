"""Experiments over many runs: ``compare`` (SupCon against CE on one data set), ``sweep`` (a grid of runs),
``robustness`` (finished runs under corruptions and attacks) and ``embeddings`` (a finished run's embeddings
exported, drawn and classified)."""
