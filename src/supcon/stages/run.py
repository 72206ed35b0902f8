"""``train_run``: the one function that starts a run. It opens the run directory, runs the stages that the kind of
run needs (resuming any that a killed run left), and writes the run's files once, when it finishes.

Kinds: ``pretrain`` (stage 1), ``supcon`` (stage 1, then the linear probe), ``ce`` (the baseline), ``linear`` (a
probe added to the finished pretrain run ``cfg.run``) and ``transfer`` (a probe on the frozen encoder of
``cfg.encoder_from``, on ``cfg.dataset``, in a run directory of its own).

>>> from supcon.config import Config
>>> from supcon.stages import load_data, train_run
>>> cfg = Config(dataset="digits", epochs=5)
>>> result = train_run("supcon", cfg, load_data(cfg), "runs/digits-supcon")
>>> result.summary["val_acc"]
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from supcon.augment import Inputs
from supcon.config import ENCODER_TITLES, LOSS_NAMES, Config
from supcon.data import DataSplits
from supcon.engine.loop import FitResult
from supcon.engine.tracking import Tracker, open_tracker
from supcon.io import save_weights
from supcon.models import Encoder
from supcon.runs import RunDir
from supcon.runs.load import check_inputs, load_encoder
from supcon.stages.ce import train_ce
from supcon.stages.common import StageContext, StageResult, load_data, stage_context
from supcon.stages.pictures import draw_run_pictures, log_projector
from supcon.stages.pretrain import pretrain
from supcon.stages.probe import second_stage

KINDS = ("pretrain", "supcon", "ce", "linear", "transfer")


@dataclass
class RunResult:
    """A finished run: its summary (``results.json``'s), its encoder and last trained model, its input scaling, the
    loop of its last stage (empty for a run kept from before a resume) and the t-SNE points of its ``tsne.png``."""

    summary: dict[str, Any]
    encoder: Encoder
    model: nn.Module
    inputs: Inputs
    fit: FitResult = dataclasses.field(default_factory=FitResult)
    tsne_xy: Any = None


def train_run(kind: str, cfg: Config, data: DataSplits | None = None, out: str | Path | None = None,
              tracker: Tracker | None = None, keep_finished: bool = False) -> RunResult:
    """Run the stages of a ``kind`` run (see :data:`KINDS`) into ``out`` (None: in memory, nothing written) and
    write its ``config.yaml`` (first), weights, ``results.json``, ``curves.png`` and ``tsne.png`` (last).

    With ``cfg.resume`` a stage that finished is kept and a stage that was killed continues from its newest
    checkpoint; with ``keep_finished`` too, a ``supcon`` or ``ce`` run that finished is read back (a comparison
    keeps its finished runs), else resuming it is an error. ``tracker`` (default: the one ``cfg.logger`` names)
    gets the metrics and pictures; one given stays open for the caller.
    """
    if kind not in KINDS:
        raise ValueError(f"run kind must be one of {', '.join(KINDS)}; got {kind!r}")
    if kind == "linear":
        out = cfg.run
    if kind == "transfer":
        cfg = transfer_config(cfg, cfg.encoder_from, out)
    track = tracker if tracker is not None else open_tracker(cfg, out)  # first: a missing package fails early
    try:
        ctx = stage_context(cfg, out, track)
        runner = {"pretrain": _pretrain_run, "supcon": _supcon_run, "ce": _ce_run, "linear": _probe_added,
                  "transfer": _transfer_run}[kind]
        kept = _kept(ctx, "linear" if kind == "supcon" else kind) if keep_finished else None
        result = kept if kept is not None else runner(ctx, data)
    except BaseException:
        if tracker is None:
            track.close()
        raise
    if tracker is None:
        track.log_summary(result.summary)
        track.close()
    return result


def _kept(ctx: StageContext, stage: str) -> RunResult | None:
    """A finished ``supcon`` or ``ce`` run read back, when resuming a comparison that had finished it."""
    if ctx.cfg.resume is None or ctx.run is None or ctx.run.stage_finished(stage) is None \
            or not ctx.run.is_run():
        return None
    encoder, _, inputs = load_encoder(ctx.run.path, ctx.device)
    return RunResult(ctx.run.summary(), encoder, encoder, inputs)


def _begin(ctx: StageContext, stage: str, refuse: bool = True) -> None:
    """Open the run directory for ``stage``: refuse one that finished (``--resume`` has nothing to do), keep the
    metrics of a resumed run and write ``config.yaml``."""
    run, cfg = ctx.run, ctx.cfg
    if run is None:
        return
    resuming = cfg.resume is not None
    if resuming and refuse:
        run.refuse_finished(stage)
    run.start(cfg, fresh=not (resuming and (run.checkpoints(stage).has_any()
                                            or run.stage_finished(stage) is not None)))


def _results(data: DataSplits, summary: dict[str, Any], inputs: Inputs) -> dict[str, Any]:
    return {"dataset": data.name, "runs": [summary], "input": dataclasses.asdict(inputs),
            "class_names": data.train.class_names, **data_facts(data)}


def data_facts(data: DataSplits) -> dict[str, Any]:
    """What ``results.json`` says of the data a run saw: the size of each split, skipped and noisy images."""
    return {"splits": {name: len(getattr(data, name)) for name in ("train", "val", "test")},
            "skipped_images": len(data.skipped), "noisy_labels": data.noisy_labels}


def _finish(ctx: StageContext, data: DataSplits, summary: dict[str, Any], inputs: Inputs,
            weights: dict[str, nn.Module]) -> None:
    """A run's outputs, once: its weights and results (the pictures follow)."""
    if ctx.run is None:
        return
    ctx.run.save_weights(weights)
    ctx.run.write_results(_results(data, summary, inputs), data.skipped)


def _data(ctx: StageContext, data: DataSplits | None) -> DataSplits:
    return data if data is not None else load_data(ctx.cfg)


def _pretrain_run(ctx: StageContext, data: DataSplits | None) -> RunResult:
    _begin(ctx, "pretrain")
    data = _data(ctx, data)
    stage1 = pretrain(ctx, data)
    _finish(ctx, data, stage1.summary, stage1.inputs, _stage1_weights(stage1))
    xy = _stage1_pictures(ctx, data, stage1)
    if ctx.run is not None:
        ctx.run.finish()
    return RunResult(stage1.summary, stage1.encoder, stage1.model, stage1.inputs, stage1.fit, xy)


def _stage1_weights(stage1: StageResult) -> dict[str, nn.Module]:
    """Stage 1's modules as the run directory stores them; the joint objective's classifier is the run's linear
    head."""
    weights = {"encoder": stage1.model.encoder, "projection": stage1.model.head}
    if hasattr(stage1.model, "classifier"):
        weights["linear"] = stage1.model.classifier
    return weights


def _stage1_pictures(ctx: StageContext, data: DataSplits, stage1: StageResult, curves: bool = True) -> Any:
    if ctx.run is None:
        return None
    return draw_run_pictures(ctx.cfg, ctx.run, ctx.tracker, data, stage1.encoder, stage1.inputs,
                             f"{LOSS_NAMES[ctx.cfg.loss]} encoder (stage 1)", curves=curves, stage="pretrain",
                             step=len(stage1.fit.history))


def _supcon_run(ctx: StageContext, data: DataSplits | None) -> RunResult:
    """Stage 1, then stage 2 on its encoder (the linear probe, or fine-tuning); one run directory. A resumed run
    keeps a finished stage 1 (its weights and record wait in the directory until the run finishes). The joint
    objective (``--loss supcon+ce``) trains its classifier in stage 1 and has no stage 2."""
    if ctx.cfg.loss == "supcon+ce":
        return _pretrain_run(ctx, data)
    _begin(ctx, "pretrain", refuse=False)
    data = _data(ctx, data)
    finetuning = ctx.cfg.stage2 == "finetune"
    # fine-tuning changes the encoder: stage 1's waits in checkpoints/ and the run's own is written at the end
    stage1_file = ctx.run.stage1_encoder() if ctx.run is not None and finetuning else None
    xy = None
    if ctx.cfg.resume is not None and ctx.run is not None and ctx.run.stage_finished("pretrain") is not None:
        stage1_summary = ctx.run.stage_finished("pretrain")
        encoder, _, inputs = load_encoder(ctx.run.path, ctx.device, weights=stage1_file)
    else:
        stage1 = pretrain(ctx, data)
        stage1_summary, encoder, inputs = stage1.summary, stage1.encoder, stage1.inputs
        if ctx.run is not None:
            if finetuning:
                save_weights(stage1_file, encoder)
                ctx.run.save_weights({"projection": stage1.model.head})
            else:
                ctx.run.save_weights({"encoder": stage1.model.encoder, "projection": stage1.model.head})
            if ctx.cfg.keep_checkpoints > 0:  # what --resume keeps of stage 1 if stage 2 is killed
                ctx.run.mark_stage_finished("pretrain", _results(data, stage1_summary, inputs))
            ctx.run.checkpoints("pretrain").clear()
        xy = _stage1_pictures(ctx, data, stage1, curves=False)  # the curves are drawn once, with stage 2's
    stage2 = second_stage(ctx, data, encoder, inputs)
    summary = {**stage1_summary, **stage2.summary,
               "seconds": stage1_summary["pretrain_seconds"] + stage2.summary["linear_seconds"]}
    _finish(ctx, data, summary, inputs, {"linear": stage2.model.fc, **({"encoder": encoder} if finetuning else {})})
    if ctx.run is not None:
        draw_run_pictures(ctx.cfg, ctx.run, ctx.tracker, data, None, None, "")
        ctx.run.finish()
    return RunResult(summary, encoder, stage2.model, inputs, stage2.fit, xy)


def _ce_run(ctx: StageContext, data: DataSplits | None) -> RunResult:
    _begin(ctx, "ce")
    data = _data(ctx, data)
    ce = train_ce(ctx, data)
    _finish(ctx, data, ce.summary, ce.inputs, {"encoder": ce.model.encoder, "linear": ce.model.fc})
    xy = None
    if ctx.run is not None:
        xy = draw_run_pictures(ctx.cfg, ctx.run, ctx.tracker, data, ce.encoder, ce.inputs,
                               f"cross-entropy encoder (val acc {ce.summary['val_acc']:.3f})", stage="ce",
                               step=len(ce.fit.history))
        ctx.run.finish()
    return RunResult(ce.summary, ce.encoder, ce.model, ce.inputs, ce.fit, xy)


def _probe_added(ctx: StageContext, data: DataSplits | None) -> RunResult:
    """Stage 2 on a finished ``pretrain`` run (``cfg.run``); its ``results.json`` then holds the full SupCon run."""
    run = RunDir(ctx.cfg.run)
    encoder, _, inputs = load_encoder(run.path)
    previous = run.summary()
    if previous["method"] == "ce":
        raise ValueError(f"{run.path} is a cross-entropy run; linear probes need a pretrain run")
    if ctx.cfg.resume is not None:
        run.refuse_finished("linear")
    if ctx.run is not None:
        ctx.run.start(ctx.cfg, fresh=False)  # first, so that --resume finds the probe's options
    data = _data(ctx, data)
    if (data.channels, data.image_size) != (inputs.channels, inputs.image_size):
        raise ValueError(f"the encoder in {run.path} expects {inputs.channels}x{inputs.image_size}x"
                         f"{inputs.image_size} images; {data.name} gives {data.channels}x{data.image_size}x"
                         f"{data.image_size} (set --image-size)")
    stage2 = second_stage(ctx, data, encoder, inputs)
    summary = {**previous, **stage2.summary,
               "seconds": previous.get("pretrain_seconds", previous["seconds"]) + stage2.summary["linear_seconds"]}
    _finish(ctx, data, summary, inputs, {"linear": stage2.model.fc,
                                         **({"encoder": encoder} if ctx.cfg.stage2 == "finetune" else {})})
    xy = None
    if ctx.run is not None:
        draw_run_pictures(ctx.cfg, ctx.run, ctx.tracker, data, None, None, "")
        if not run.file("tsne.png").is_file():  # the frozen encoder's picture is already there if stage 1 drew it
            title = f"{'SimCLR' if previous['method'] == 'simclr' else 'SupCon'} encoder"
            xy = draw_run_pictures(ctx.cfg, ctx.run, ctx.tracker, data, encoder, inputs, title, curves=False)
        ctx.run.finish()
    return RunResult(summary, encoder, stage2.model, inputs, stage2.fit, xy)


def _transfer_run(ctx: StageContext, data: DataSplits | None) -> RunResult:
    """Stage 2 on the encoder of ``cfg.encoder_from`` (a pretrain or ce run), on ``cfg.dataset``: a linear probe on
    the frozen encoder, or with ``--stage2 finetune`` the encoder fine-tuned (a copy: the source keeps its own).

    The images are resized to the encoder's input size and fed as its training did (same scaling and
    normalisation statistics). The run directory gets a copy of the encoder, so that ``tsne``, ``embed`` and
    ``report`` read it like any other run; the source is left as it was.
    """
    cfg = ctx.cfg
    source = RunDir(cfg.encoder_from).require()
    encoder, source_cfg, inputs = load_encoder(source.path)
    previous = source.summary()
    data = _data(ctx, data)
    check_inputs(data, inputs, source.path)  # before the run directory exists: a wrong data set leaves none
    if ctx.run is not None:
        if cfg.resume is not None:
            ctx.run.refuse_finished("linear")
        ctx.run.start(cfg, fresh=cfg.resume is None)
    stage2 = second_stage(ctx, data, encoder, inputs)
    summary = {"method": previous["method"], "loss": previous.get("loss"), "seed": cfg.seed,
               "encoder_from": str(source.path),
               "encoder_dataset": source.results().get("dataset"), "stage1_loss": None,
               **stage2.summary, "seconds": stage2.summary["linear_seconds"]}
    if cfg.stage2 == "finetune" and source.results().get("dataset") == data.name:
        # the source's stage 1 on the same data and this fine-tuning are one method: its time counts in
        summary["seconds"] += previous.get("pretrain_seconds", 0.0)
    _finish(ctx, data, summary, inputs, {"encoder": encoder, "linear": stage2.model.fc})
    xy = None
    if ctx.run is not None:
        draw_run_pictures(ctx.cfg, ctx.run, ctx.tracker, data, None, None, "")
        log_projector(ctx.tracker, encoder, data, inputs, "linear", len(stage2.fit.history), cfg.seed,
                      cfg.eval_batch_size)
        title = (f"{ENCODER_TITLES[previous['method']]} from {source.path.name} "
                 f"(val acc {summary['val_acc']:.3f})")
        xy = draw_run_pictures(ctx.cfg, ctx.run, ctx.tracker, data, encoder, inputs, title, curves=False)
        ctx.run.finish()
    return RunResult(summary, encoder, stage2.model, inputs, stage2.fit, xy)


def transfer_config(cfg: Config, source: str | Path, out: str | Path) -> Config:
    """The options of a transfer run from ``source`` into ``out``: the encoder's architecture and input size are
    the source's, whatever the options say (the config records what ran)."""
    source, out = RunDir(source).require().path, Path(out)
    if out.resolve() == source.resolve():
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
                       out=str(out))

