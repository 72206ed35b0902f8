"""Experiment trackers: TensorBoard or Weights & Biases, besides the ``metrics.jsonl`` every run writes.

A :class:`Tracker` receives the config once, every per-epoch record that :func:`supcon.engine.loop.fit` writes
(``fit(..., on_epoch=tracker.log_metrics)``), the pictures and the final summary. Each stage's epochs are
logged under ``STAGE/NAME`` with the stage's own epoch as the step, so that a two-stage run reads as two
curves that both start at epoch 1.

>>> from supcon.config import Config
>>> tracker = open_tracker(Config(logger="tensorboard"), "runs/x")    # events in runs/x/tensorboard/
>>> tracker.log_metrics({"stage": "ce", "epoch": 1, "loss": 0.7, "val_acc": 0.8})
>>> tracker.close()
"""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from supcon.config import Config
from supcon.engine import distributed

if TYPE_CHECKING:
    import torch

LOGGERS = ("none", "tensorboard", "wandb")
_NOT_METRICS = ("stage", "epoch")


def _missing(package: str) -> ImportError:
    return ImportError(f"--logger {package} needs the {package} package: pip install 'supcon[{package}]'")


def _scalars(record: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in record.items()
            if k not in _NOT_METRICS and isinstance(v, numbers.Real) and not isinstance(v, bool)}


class Tracker:
    """The interface, and the tracker of ``--logger none``: every call does nothing."""

    embeddings = False  # whether log_embedding keeps what it gets (the stages compute the features only then)

    def log_config(self, cfg: Config) -> None:
        pass

    def log_metrics(self, record: dict[str, Any]) -> None:
        """One ``metrics.jsonl`` record: ``{"stage": ..., "epoch": ..., "loss": ..., ...}``."""

    def log_image(self, name: str, path: str | Path) -> None:
        pass

    def log_summary(self, summary: dict[str, Any]) -> None:
        """The run's final numbers (a ``results.json`` run entry)."""

    def log_embedding(self, tag: str, features: torch.Tensor, labels: list[str], images: torch.Tensor,
                      step: int) -> None:
        """Embeddings to look at interactively: ``features [N, D]``, each point's class name in ``labels``, and
        its thumbnail in ``images`` (uint8 ``[N, C, H, W]``); ``tag`` names the stage, ``step`` its last epoch."""

    def close(self) -> None:
        pass

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class TensorBoardTracker(Tracker):
    embeddings = True

    def __init__(self, log_dir: str | Path | None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # torch's writer imports the tensorboard package
            raise _missing("tensorboard") from None
        self.writer = SummaryWriter(log_dir=None if log_dir is None else str(log_dir))
        self.cfg: Config | None = None
        self.images: dict[str, int] = {}

    def log_config(self, cfg: Config) -> None:
        self.cfg = cfg
        # Markdown code block: TensorBoard's text tab would otherwise reflow the YAML into one paragraph.
        text = "".join(f"    {line}\n" for line in yaml.safe_dump(cfg.to_dict(), sort_keys=False).splitlines())
        self.writer.add_text("config", text)

    def log_metrics(self, record: dict[str, Any]) -> None:
        stage = record.get("stage", "train")
        for key, value in _scalars(record).items():
            self.writer.add_scalar(f"{stage}/{key}", value, record["epoch"])
        self.writer.flush()  # metrics survive a crash or a killed job

    def log_image(self, name: str, path: str | Path) -> None:
        import numpy as np
        from PIL import Image

        image = np.asarray(Image.open(path).convert("RGB"))
        step = self.images.get(name, 0)  # curves.png is redrawn after each stage: keep every version
        self.images[name] = step + 1
        self.writer.add_image(name, image, step, dataformats="HWC")
        self.writer.flush()

    def log_summary(self, summary: dict[str, Any]) -> None:
        metrics = {f"final/{k}": v for k, v in _scalars(summary).items()}
        if self.cfg is None or not metrics:
            return
        # The HParams tab takes scalars and strings only; None (an unset option) is shown as "default".
        hparams = {k: ("default" if v is None else v) for k, v in self.cfg.to_dict().items()
                   if k not in ("out", "quiet") and (v is None or isinstance(v, (bool, int, float, str)))}
        self.writer.add_hparams(hparams, metrics, run_name=".")
        self.writer.flush()

    def log_embedding(self, tag: str, features: torch.Tensor, labels: list[str], images: torch.Tensor,
                      step: int) -> None:
        """For TensorBoard's projector: ``STEP/TAG/`` (``tensors.tsv``, ``metadata.tsv``, ``sprite.png``) and
        its entry in ``projector_config.pbtxt``."""
        import shutil

        logdir = Path(self.writer.get_logdir())
        config = logdir / "projector_config.pbtxt"
        if not hasattr(self.writer, "_projector_config") and config.is_file():
            # The writer rewrites the whole file from the embeddings it was given itself; a writer opened later on
            # the same directory (supcon linear --run DIR, a new run in an old run's directory) would drop the
            # entries written before it.
            from google.protobuf import text_format
            from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

            self.writer._projector_config = text_format.Parse(config.read_text(), ProjectorConfig())
        name = f"{tag}:{step:05d}"  # what add_embedding names the entry: one entry per stage and step
        if hasattr(self.writer, "_projector_config"):
            old = [e for e in self.writer._projector_config.embeddings if e.tensor_name == name]
            for entry in old:
                self.writer._projector_config.embeddings.remove(entry)
        shutil.rmtree(logdir / f"{step:05d}" / tag, ignore_errors=True)  # an earlier run's copy of the same stage
        self.writer.add_embedding(features.float(), metadata=list(labels), label_img=images.float() / 255,
                                  global_step=step, tag=tag)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker(Tracker):
    def __init__(self, project: str, run_dir: str | Path | None, name: str | None = None,
                 group: str | None = None):
        try:
            import wandb
        except ImportError:
            raise _missing("wandb") from None
        self.wandb = wandb
        self.project, self.name, self.group = project, name, group
        self.dir = None if run_dir is None else str(run_dir)
        self.run = None
        self.stages: set[str] = set()

    def log_config(self, cfg: Config) -> None:
        # The run starts here rather than in __init__, since wandb wants the config at init.
        if self.run is None:
            if self.dir is not None:
                Path(self.dir).mkdir(parents=True, exist_ok=True)  # wandb wants its dir to exist
            name = self.name or (Path(self.dir).name if self.dir else None)
            # create_new: a run left open by an earlier error in this process is not reused by mistake.
            self.run = self.wandb.init(project=self.project, dir=self.dir, config=cfg.to_dict(), name=name,
                                       group=self.group, reinit="create_new")
        else:
            self.run.config.update(cfg.to_dict(), allow_val_change=True)

    def _started(self):
        if self.run is None:
            raise RuntimeError("WandbTracker.log_config must be called first (it starts the wandb run)")
        return self.run

    def log_metrics(self, record: dict[str, Any]) -> None:
        run = self._started()
        stage = record.get("stage", "train")
        if stage not in self.stages:  # each stage is plotted against its own epochs
            self.stages.add(stage)
            run.define_metric(f"{stage}/epoch")
            run.define_metric(f"{stage}/*", step_metric=f"{stage}/epoch")
        run.log({f"{stage}/epoch": record["epoch"], **{f"{stage}/{k}": v for k, v in _scalars(record).items()}})

    def log_image(self, name: str, path: str | Path) -> None:
        self._started().log({name: self.wandb.Image(str(path))})

    def log_summary(self, summary: dict[str, Any]) -> None:
        self._started().summary.update({f"final/{k}": v for k, v in _scalars(summary).items()})

    def close(self, exit_code: int = 0) -> None:
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None

    def __exit__(self, exc_type, *exc) -> None:
        self.close(exit_code=0 if exc_type is None else 1)  # wandb then shows the run as failed


def open_tracker(cfg: Config, run_dir: str | Path | None, name: str | None = None,
                 group: str | None = None) -> Tracker:
    """The tracker ``cfg.logger`` names, with the config already logged.

    TensorBoard writes to ``RUN_DIR/tensorboard/``; wandb keeps its files in ``RUN_DIR/wandb/`` and names the run
    after the directory unless ``name`` is given (``group`` collects the runs of one comparison).
    """
    if cfg.logger == "none" or not distributed.is_main():  # one process of a distributed run reports
        tracker = Tracker()
    elif cfg.logger == "tensorboard":
        tracker = TensorBoardTracker(None if run_dir is None else Path(run_dir) / "tensorboard")
    elif cfg.logger == "wandb":
        tracker = WandbTracker(cfg.wandb_project, run_dir, name, group)
    else:
        raise ValueError(f"logger must be one of {', '.join(LOGGERS)}; got {cfg.logger!r}")
    tracker.log_config(cfg)
    return tracker
