"""``train_run``: the one function that starts a run. It opens the run directory, runs the stages of the run's
method (:mod:`supcon.methods`) in order, resuming any that a killed run left, and writes the run's files once,
when it finishes.

A method's encoder comes from its first stage: stage 1 trained here (``pretrain``), stage 1 already finished in
this directory (a resumed run, or ``supcon linear --run DIR`` adding a probe to a pretrain run), or the encoder of
another run (``cfg.encoder_from``: a transfer, or a comparison's fine-tuning of its linear SupCon's encoder).

>>> from supcon.config import Config
>>> from supcon.stages import load_data, train_run
>>> cfg = Config(dataset="digits", epochs=5)
>>> result = train_run("supcon", cfg, load_data(cfg), "runs/digits-supcon")
>>> result.summary["val_acc"]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from supcon.augment import Inputs
from supcon.config import Config
from supcon.data import DataSplits
from supcon.engine.callbacks import Callback
from supcon.engine.loop import FitResult
from supcon.engine.tracking import Tracker, open_tracker
from supcon.io import save_weights
from supcon.methods import LOSS_TITLES, Method, encoder_method, encoder_title, get_method
from supcon.models import Encoder
from supcon.runs import RunDir
from supcon.runs.load import check_inputs, load_encoder
from supcon.stages.ce import train_ce
from supcon.stages.common import StageContext, StageResult, load_data, stage_context
from supcon.stages.pictures import draw_curves, draw_run_pictures, log_projector
from supcon.stages.pretrain import pretrain
from supcon.stages.probe import second_stage


@dataclass
class RunResult:
    """A finished run: its summary (``results.json``'s), its encoder and last trained model, its input scaling, the
    loop of its last stage (empty for a run kept from before a resume) and the t-SNE points of its ``tsne.png``."""

    summary: dict[str, Any]
    encoder: Encoder | None  # None: a record kept without its weights
    model: nn.Module | None
    inputs: Inputs
    fit: FitResult = dataclasses.field(default_factory=FitResult)
    tsne_xy: Any = None


def train_run(method: str | Method, cfg: Config, data: DataSplits | None = None, out: str | Path | None = None,
              tracker: Tracker | None = None, keep_finished: bool = False, until: str | None = None,
              callbacks: Sequence[Callback] = ()) -> RunResult:
    """Run the stages of ``method`` (a name of :data:`supcon.methods.METHODS`) into ``out`` (None: in memory,
    nothing written) and write its ``config.yaml`` (first), weights, ``results.json``, ``curves.png`` and
    ``tsne.png`` (last). ``until`` stops after that stage (``supcon pretrain``: stage 1 alone); ``callbacks`` join
    every stage's loop (a test's :class:`~supcon.engine.callbacks.SignalAt`).

    With ``cfg.run`` the method continues the finished pretrain run there (its stage 1 is kept, the rest is added
    to it); with ``cfg.encoder_from`` its first stage is that run's encoder. With ``cfg.resume`` a stage that
    finished is kept and a stage that was killed continues from its newest checkpoint; with ``keep_finished`` too,
    a run that finished is read back (a comparison keeps its finished runs), else resuming it is an error.
    ``tracker`` (default: the one ``cfg.logger`` names) gets the metrics and pictures; one given stays open.
    """
    method = get_method(method)
    cfg = method.configure(cfg)
    if cfg.run is not None and not method.borrows_encoder:
        out = cfg.run
    if cfg.encoder_from and method.name != "ce":
        cfg = transfer_config(cfg, cfg.encoder_from, out)
    stages = method.stages_for(cfg)
    if until is not None:
        if until not in stages:
            raise ValueError(f"{method.name} has no {until} stage; its stages are {', '.join(stages)}")
        stages = stages[:stages.index(until) + 1]
    track = tracker if tracker is not None else open_tracker(cfg, out)  # first: a missing package fails early
    try:
        ctx = stage_context(cfg, out, track, callbacks)
        kept = _kept(ctx, stages[-1]) if keep_finished else None
        result = kept if kept is not None else _StageSequence(method, ctx, stages).run(data)
    except BaseException:
        if tracker is None:
            track.close()
        raise
    if tracker is None:
        track.log_summary(result.summary)
        track.close()
    return result


def _kept(ctx: StageContext, last: str) -> RunResult | None:
    """A finished run read back, when resuming a comparison that had finished it (on every process alike); a
    record without weights (:meth:`RunDir.is_record_only`, a committed study continued) gives its summary and no
    encoder."""
    run = ctx.reads
    if ctx.cfg.resume is None or run is None or not run.is_run():
        return None
    if run.is_record_only():
        return RunResult(run.summary(), None, None, Inputs(**run.results()["input"]))
    if run.stage_finished(last) is None:
        return None
    encoder, _, inputs = load_encoder(run.path, ctx.device)
    return RunResult(run.summary(), encoder, encoder, inputs)


@dataclass
class _Encoder:
    """What a method's first stage hands the next: the encoder, its input scaling, the summary so far, and where
    it came from (``trained`` here now, ``kept`` from this run's finished stage 1, ``borrowed`` from
    ``cfg.encoder_from``)."""

    encoder: Encoder
    inputs: Inputs
    summary: dict[str, Any]
    origin: str
    source: RunDir | None = None
    source_summary: dict[str, Any] | None = None  # the borrowed encoder's run's, read once
    stage: StageResult | None = None  # stage 1's result, where it trained now
    tsne_xy: Any = None


class _StageSequence:
    """One run of a method's ``stages``: begin (config.yaml), data, each stage in turn, the outputs once."""

    def __init__(self, method: Method, ctx: StageContext, stages: tuple[str, ...]):
        self.method, self.ctx, self.stages = method, ctx, stages
        self.cfg, self.run_dir = ctx.cfg, ctx.run

    def run(self, data: DataSplits | None) -> RunResult:
        cfg = self.cfg
        first, last = self.stages[0], self.stages[-1]
        source = RunDir(cfg.encoder_from).require() if cfg.encoder_from else None
        adding = cfg.run is not None and source is None  # stage 2 added to a finished pretrain run
        if adding:
            previous = RunDir(cfg.run).require().summary()
            if previous["method"] == "ce":
                raise ValueError(f"{cfg.run} is a cross-entropy run; linear probes need a pretrain run")
            if last == "pretrain":
                raise ValueError(f"{self.method.name} has no second stage to add to {cfg.run}")
        if source is not None:  # before the run directory exists: a wrong data set leaves none
            data = data if data is not None else load_data(cfg)
            check_inputs(data, Inputs(**source.results()["input"]), source.path)
        self._begin(adding)
        data = data if data is not None else load_data(cfg)
        if first == "ce":
            return self._ce(data)
        stage1 = self._stage1(data, source, adding, last == "pretrain")
        if last == "pretrain":
            return self._finish_stage1(data, stage1)
        return self._second_stage(data, stage1)

    # ------------------------------------------------------------------------------------------ beginning
    def _begin(self, adding: bool) -> None:
        """Open the run directory: refuse one whose last stage finished (``--resume`` has nothing to do), keep
        what a resumed run or a pretrain run being added to has, and write ``config.yaml``."""
        run, cfg = self.run_dir, self.cfg
        resuming = cfg.resume is not None
        if resuming and self.ctx.reads is not None:  # every process: they all stop, not rank 0 alone
            self.ctx.reads.refuse_finished(self.stages[-1])
        if run is None:
            return
        going = any(run.checkpoints(stage).has_any() or run.stage_finished(stage) is not None
                    for stage in self.stages)
        run.start(cfg, fresh=not (adding or resuming and going))

    # ------------------------------------------------------------------------------------------ stage 1
    def _stage1(self, data: DataSplits, source: RunDir | None, adding: bool, last: bool) -> _Encoder:
        """The encoder of the method's first stage: borrowed, kept from this run, or trained now."""
        ctx, cfg, run = self.ctx, self.cfg, self.run_dir
        if source is not None:
            encoder, _, inputs = load_encoder(source.path)
            previous = source.summary()
            summary = {"method": self.method.name, "encoder_method": encoder_method(previous),
                       "loss": previous.get("loss"), "seed": cfg.seed, "encoder_from": str(source.path),
                       "encoder_dataset": source.results().get("dataset"), "stage1_loss": None}
            return _Encoder(encoder, inputs, summary, "borrowed", source, previous)
        home = RunDir(cfg.run) if adding else ctx.reads  # every process decides alike
        finished = home.stage_finished("pretrain") if home is not None and (adding or cfg.resume is not None) \
            else None
        if finished is not None and not last:
            # fine-tuning changes the run's encoder: stage 1's waits in checkpoints/ until the run finishes
            stage1_file = home.stage1_encoder()
            encoder, _, inputs = load_encoder(home.path, ctx.device,
                                              weights=stage1_file if stage1_file.is_file() else None)
            if (data.channels, data.image_size) != (inputs.channels, inputs.image_size):
                raise ValueError(f"the encoder in {home.path} expects {inputs.channels}x{inputs.image_size}x"
                                 f"{inputs.image_size} images; {data.name} gives {data.channels}x{data.image_size}x"
                                 f"{data.image_size} (set --image-size)")
            return _Encoder(encoder, inputs, finished, "kept")
        trained = pretrain(ctx, data)
        result = _Encoder(trained.encoder, trained.inputs, trained.summary, "trained", stage=trained)
        if last or run is None:
            return result
        if self.stages[-1] == "finetune":
            save_weights(run.stage1_encoder(), trained.encoder)
            run.save_weights({"projection": trained.model.head})
        else:
            run.save_weights({"encoder": trained.model.encoder, "projection": trained.model.head})
        if cfg.keep_checkpoints > 0:  # what --resume keeps of stage 1 if stage 2 is killed
            run.mark_stage_finished("pretrain", _results(data, trained.summary, trained.inputs))
        run.checkpoints("pretrain").clear()
        result.tsne_xy = self._stage1_pictures(data, trained, curves=False)  # the curves come with stage 2's
        return result

    def _stage1_pictures(self, data: DataSplits, stage1: StageResult, curves: bool = True) -> Any:
        if self.run_dir is None:
            return None
        return draw_run_pictures(self.cfg, self.run_dir, self.ctx.tracker, data, stage1.encoder, stage1.inputs,
                                 f"{LOSS_TITLES[self.cfg.loss]} encoder (stage 1)", curves=curves, stage="pretrain",
                                 step=len(stage1.fit.history))

    def _finish_stage1(self, data: DataSplits, stage1: _Encoder) -> RunResult:
        """A run whose last stage is stage 1 (``supcon pretrain``, the joint objective)."""
        trained = stage1.stage
        weights = {"encoder": trained.model.encoder, "projection": trained.model.head}
        if hasattr(trained.model, "classifier"):  # the joint objective's classifier is the run's linear head
            weights["linear"] = trained.model.classifier
        self._write(data, trained.summary, trained.inputs, weights)
        xy = self._stage1_pictures(data, trained)
        if self.run_dir is not None:
            self.run_dir.finish()
        return RunResult(trained.summary, trained.encoder, trained.model, trained.inputs, trained.fit, xy)

    # ------------------------------------------------------------------------------------------ stage 2
    def _second_stage(self, data: DataSplits, stage1: _Encoder) -> RunResult:
        """Stage 2 (the linear probe, or fine-tuning) on the first stage's encoder."""
        ctx, cfg, run = self.ctx, self.cfg, self.run_dir
        stage2 = second_stage(ctx, data, stage1.encoder, stage1.inputs)
        earlier = stage1.summary.get("pretrain_seconds", stage1.summary.get("seconds", 0.0))
        if stage1.origin == "borrowed":
            earlier = 0.0
            if cfg.stage2 == "finetune" and stage1.summary["encoder_dataset"] == data.name:
                # the source's stage 1 on the same data and this fine-tuning are one method: its time counts in
                earlier = stage1.source_summary.get("pretrain_seconds", 0.0)
        summary = {**stage1.summary, **stage2.summary, "seconds": earlier + stage2.summary["linear_seconds"]}
        if stage1.origin != "borrowed":
            summary["method"] = self.method.name
        weights = {"linear": stage2.model.fc}
        if cfg.stage2 == "finetune" or stage1.origin == "borrowed":
            weights = {"encoder": stage1.encoder, **weights}
        self._write(data, summary, stage1.inputs, weights)
        xy = stage1.tsne_xy
        if run is not None:
            draw_curves(run, ctx.tracker)
            if stage1.origin == "borrowed":
                log_projector(ctx.tracker, stage1.encoder, data, stage1.inputs, "linear", len(stage2.fit.history),
                              cfg.seed, cfg.eval_batch_size)
                title = (f"{encoder_title(stage1.source_summary)} from {stage1.source.path.name} "
                         f"(val acc {summary['val_acc']:.3f})")
                xy = draw_run_pictures(cfg, run, ctx.tracker, data, stage1.encoder, stage1.inputs, title,
                                       curves=False)
            elif stage1.origin == "kept" and not run.file("tsne.png").is_file():
                # the frozen encoder's picture is there already where stage 1 drew it
                xy = draw_run_pictures(cfg, run, ctx.tracker, data, stage1.encoder, stage1.inputs,
                                       encoder_title(stage1.summary), curves=False)
            run.finish()
        return RunResult(summary, stage1.encoder, stage2.model, stage1.inputs, stage2.fit, xy)

    # ------------------------------------------------------------------------------------------ the baseline
    def _ce(self, data: DataSplits) -> RunResult:
        ce = train_ce(self.ctx, data)
        self._write(data, ce.summary, ce.inputs, {"encoder": ce.model.encoder, "linear": ce.model.fc})
        xy = None
        if self.run_dir is not None:
            xy = draw_run_pictures(self.cfg, self.run_dir, self.ctx.tracker, data, ce.encoder, ce.inputs,
                                   f"cross-entropy encoder (val acc {ce.summary['val_acc']:.3f})", stage="ce",
                                   step=len(ce.fit.history))
            self.run_dir.finish()
        return RunResult(ce.summary, ce.encoder, ce.model, ce.inputs, ce.fit, xy)

    def _write(self, data: DataSplits, summary: dict[str, Any], inputs: Inputs, weights: dict[str, nn.Module]
               ) -> None:
        """A run's outputs, once: its weights and results (the pictures follow)."""
        if self.run_dir is None:
            return
        self.run_dir.save_weights(weights)
        self.run_dir.write_results(_results(data, summary, inputs), data.skipped)


def _results(data: DataSplits, summary: dict[str, Any], inputs: Inputs) -> dict[str, Any]:
    return {"dataset": data.name, "runs": [summary], "input": dataclasses.asdict(inputs),
            "class_names": data.train.class_names, **data_facts(data)}


def data_facts(data: DataSplits) -> dict[str, Any]:
    """What ``results.json`` says of the data a run saw: the size of each split, skipped and noisy images, and
    the empty class folders left out."""
    return {"splits": {name: len(getattr(data, name)) for name in ("train", "val", "test")},
            "skipped_images": len(data.skipped), "noisy_labels": data.noisy_labels,
            **({"empty_class_folders": data.empty_classes} if data.empty_classes else {})}


def transfer_config(cfg: Config, source: str | Path, out: str | Path | None) -> Config:
    """The options of a transfer run from ``source`` into ``out``: the encoder's architecture and input size are
    the source's, whatever the options say (the config records what ran)."""
    source = RunDir(source).require().path
    if out is not None and Path(out).resolve() == source.resolve():
        raise ValueError(f"the transfer run needs its own directory; to add a probe to {source} use --run")
    source_cfg = RunDir(source).config()
    inputs = Inputs(**RunDir(source).results()["input"])
    if cfg.image_size not in (None, inputs.image_size):
        raise ValueError(f"the encoder in {source} takes {inputs.image_size}x{inputs.image_size} images; leave "
                         f"--image-size out (images are resized to it) or set it to {inputs.image_size}")
    # stored as the source's were, so that its input scaling (and centre crop) applies to the new images
    return cfg.replace(image_size=inputs.image_size, store_size=inputs.stored_size or inputs.image_size,
                       val_crop=inputs.crop if inputs.stored_size else cfg.val_crop, encoder=source_cfg.encoder,
                       stem=source_cfg.stem, normalize=source_cfg.normalize, encoder_from=str(source), run=None,
                       out=str(out) if out is not None else cfg.out)
