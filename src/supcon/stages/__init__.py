"""The stages of the method, each a function of a :class:`~supcon.stages.common.StageContext` and the data:
:func:`~supcon.stages.pretrain.pretrain` (stage 1, with the kNN monitor), :func:`~supcon.stages.probe.linear_probe`
(stage 2) and :func:`~supcon.stages.ce.train_ce` (the baseline); :func:`train_run` starts every run and writes its
files.

>>> from supcon.config import Config
>>> from supcon.stages import load_data, train_run
>>> cfg = Config(dataset="digits", epochs=5)
>>> result = train_run("supcon", cfg, load_data(cfg), "runs/digits")     # stage 1, then the probe
"""

from supcon.stages.ce import train_ce
from supcon.stages.common import StageContext, StageResult, load_data, stage_context
from supcon.stages.pretrain import pretrain
from supcon.stages.probe import linear_probe
from supcon.stages.run import RunResult, train_run, transfer_config

__all__ = ["RunResult", "StageContext", "StageResult", "linear_probe", "load_data", "pretrain",
           "stage_context", "train_ce", "train_run", "transfer_config"]
