"""supcon: Supervised Contrastive Learning (Khosla et al., 2020) with an exact, memory-bounded loss.

The building blocks are plain modules: ``supcon.losses``, ``supcon.augment``, ``supcon.models`` and
``supcon.data``; ``supcon.stages`` trains with them (``train_run``), ``supcon.experiments`` compares, sweeps and
tests robustness, and the ``supcon`` command is a thin layer over these (``docs/architecture.md``).
``supcon.load_run(RUN_DIR)`` gives a finished run's classifier: ``.predict(images)``, ``.classes``.
"""

__version__ = "0.1.0"
__all__ = ["__version__", "load_run"]


def __getattr__(name: str):
    # Imported on first use, so that `import supcon` (and the command's --help) does not load torch.
    if name == "load_run":
        from supcon.runs.load import load_run

        return load_run
    raise AttributeError(f"module 'supcon' has no attribute {name!r}")
