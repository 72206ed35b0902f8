"""Run directories: :class:`RunDir` knows their layout, kinds, summaries, finished stages and checkpoints;
:mod:`supcon.runs.load` turns a finished run back into a classifier; :mod:`supcon.runs.options` layers a
command's options (defaults, a run's ``config.yaml``, a YAML file, flags) and checks a ``--resume``."""

from supcon.runs.rundir import FoundRun, RunDir, expand_runs, find_runs, upgrade_summary

__all__ = ["FoundRun", "RunDir", "expand_runs", "find_runs", "load_classifier", "load_encoder", "load_run",
           "upgrade_summary"]


def __getattr__(name: str):
    # The loaders import the models and evaluation; reading a run directory's files does not need them.
    if name in ("load_classifier", "load_encoder", "load_run"):
        from supcon.runs import load

        return getattr(load, name)
    raise AttributeError(f"module 'supcon.runs' has no attribute {name!r}")
