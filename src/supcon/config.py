"""One ``Config`` dataclass carries every option of every command.

The command-line flags, the ``--config`` YAML file and the ``config.yaml`` written into each run directory are
all views of this class: each field's metadata holds its help text, its allowed values and the commands it
applies to, so nothing about an option is written twice.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

COMMANDS = ("pretrain", "linear", "ce", "compare", "sweep")
STAGE1 = ("pretrain", "compare", "sweep")
STAGE2 = ("linear", "compare", "sweep")
BASELINE = ("ce", "compare", "sweep")
TRAINING = COMMANDS
NEW_RUN = ("pretrain", "ce", "compare", "sweep")  # `linear` adds to an existing run: its encoder and dir are given
RESUMABLE = ("pretrain", "linear", "ce", "compare")


# The usual starting points: SGD with momentum at 0.1 for batch 128-256 (He et al. 2016, and the SupCon reference
# code's CE and contrastive recipes scaled to that batch); the adaptive methods at their libraries' default.
DEFAULT_LR = {"sgd": 0.1, "adam": 1e-3, "adamw": 1e-3, "rmsprop": 1e-3}
TSNE_POINTS = 2000  # t-SNE is quadratic-ish in the points; a few thousand keep a picture under a minute on a CPU


def option(default: Any, help: str, commands=TRAINING, choices=None, metavar=None, runtime: bool = False,
           saved: bool = True) -> Any:
    """A Config field. ``runtime``: the option does not change what a run computes (where it runs, what it
    prints or draws, how it is checkpointed), so a resumed run may give it another value. ``saved=False`` keeps
    it out of ``config.yaml`` (an option about this invocation, not about the run)."""
    return field(default=default,
                 metadata={"help": help, "commands": tuple(commands), "choices": choices, "metavar": metavar,
                           "runtime": runtime, "saved": saved})


@dataclass
class Config:
    # data
    dataset: str = option("digits", "data set: 'digits' (bundled with scikit-learn), 'npz:PATH', 'folder:PATH', or "
                          "one downloaded on first use: flowers5, cats_vs_dogs, imagenet5, cifar10, cifar100",
                          metavar="SPEC")
    data_dir: str | None = option(None, "where the named data sets are downloaded, extracted and cached; may hold "
                                  "an archive or extracted tree fetched elsewhere (default: $SUPCON_DATA_DIR, "
                                  "else ~/.cache/supcon)", metavar="DIR", runtime=True)
    image_size: int | None = option(None, "resize images to this square size (default: the data set's own size; "
                                    "128 for flowers5, cats_vs_dogs and imagenet5, whose photos differ in size)",
                                    metavar="PX")
    val_fraction: float = option(0.15, "validation share when the data set has no split of its own")
    max_train: int | None = option(None, "use at most this many training images (stratified; for quick runs)",
                                   metavar="N")
    max_val: int | None = option(None, "use at most this many validation images (stratified)", metavar="N")
    # model
    encoder: str = option("auto", "encoder: resnet18/34/50/101/152, smallcnn, or auto (smallcnn below 32 px, "
                          "else resnet18)", NEW_RUN,
                          choices=("auto", "smallcnn", "resnet18", "resnet34", "resnet50", "resnet101",
                                   "resnet152"))
    stem: str = option("auto", "ResNet stem: imagenet (7x7/2 + max-pool), cifar (3x3/1, no pool), auto "
                       "(cifar up to 32 px)", NEW_RUN, choices=("auto", "imagenet", "cifar"))
    projection: str = option("mlp", "projection head: mlp (one hidden layer) or linear", STAGE1,
                             choices=("mlp", "linear"))
    proj_hidden: int = option(2048, "hidden width of the mlp projection head", STAGE1)
    proj_dim: int = option(128, "output size of the projection head", STAGE1)
    # stage 1 / CE optimisation
    epochs: int = option(30, "epochs of stage 1 (SupCon) and of the CE baseline", STAGE1 + ("ce",))
    batch_size: int = option(128, "images per batch (each gives --views views in stage 1)")
    optimizer: str = option("adamw", "optimizer for stage 1 and CE", STAGE1 + ("ce",),
                            choices=("sgd", "adam", "adamw", "rmsprop"))
    lr: float | None = option(None, "learning rate for stage 1 and CE (default: by optimizer, sgd 0.1, adam, adamw "
                              "and rmsprop 0.001)", STAGE1 + ("ce",), metavar="LR")
    momentum: float = option(0.9, "momentum (sgd, rmsprop)", STAGE1 + ("ce",))
    nesterov: bool = option(False, "Nesterov momentum (sgd)", STAGE1 + ("ce",))
    weight_decay: float = option(1e-4, "weight decay for stage 1 and CE", STAGE1 + ("ce",))
    schedule: str = option("cosine", "learning-rate schedule", choices=("fixed", "cosine", "step"))
    step_epochs: int = option(30, "epochs between decays of the 'step' schedule")
    step_gamma: float = option(0.1, "decay factor of the 'step' schedule")
    warmup_epochs: float = option(0.0, "linear warm-up, in epochs (fractions allowed)")
    grad_clip: float | None = option(None, "clip the gradient norm to this value", metavar="NORM")
    chunk_size: int | None = option(None, "gradient cache: embed the batch's views N at a time without keeping "
                                    "activations, take the loss on the whole batch, then backpropagate chunk by "
                                    "chunk (a second forward pass; memory of N images instead of the batch). "
                                    "BatchNorm then normalises each chunk with its own statistics, so gradients "
                                    "equal the plain step's only when N covers the batch (default: plain step)",
                                    STAGE1, metavar="N")
    compile: bool = option(False, "wrap the trained model in torch.compile: the first step compiles it (up to a "
                           "minute for ResNet-18 on 2 CPU cores, where later steps then gained only 2-3 in 100); "
                           "meant for GPUs and long runs")
    # loss
    loss: str = option("supcon", "stage-1 loss: supcon (L_out), supcon_in (L_in) or simclr (labels ignored)",
                       STAGE1, choices=("supcon", "supcon_in", "simclr"))
    temperature: float = option(0.1, "temperature of the contrastive loss", STAGE1)
    base_temperature: float | None = option(None, "loss is scaled by temperature/base_temperature "
                                            "(default: no scaling)", STAGE1, metavar="T")
    contrast_mode: str = option("all", "anchors: every view (all) or view 0 only (one)", STAGE1,
                                choices=("all", "one"))
    loss_block_size: int | None = option(None, "anchor rows per block in the loss, bounding its memory "
                                         "(default: automatic, from N)", STAGE1, metavar="ROWS")
    # augmentation
    augment: str = option("simclr", "augmentation policy of stage 1 and CE",
                          STAGE1 + ("ce",), choices=("none", "crop", "simclr", "autoaugment", "randaugment"))
    views: int = option(2, "views per image in stage 1", STAGE1)
    first_view: str = option("same", "view 0 uses the policy (same) or plain crop+resize (crop), as in the study",
                             STAGE1, choices=("same", "crop"))
    crop_scale: float = option(0.2, "smallest area share kept by the random resized crop")
    hflip: bool = option(True, "random horizontal flips in crop-based policies")
    blur: bool = option(False, "Gaussian blur in the simclr policy")
    batch_augment: bool = option(True, "augment whole batches at once (policies none, crop, simclr): per-image "
                                 "random parameters from the same distributions, computed in float; "
                                 "--no-batch-augment: torchvision's per-image uint8 transforms")
    normalize: bool = option(False, "normalise inputs with the training set's channel mean and std "
                             "(default: pixels scaled to [0, 1], as in the study)", NEW_RUN)
    # stage 2
    linear_epochs: int = option(100, "most epochs of the linear probe (stage 2)", STAGE2)
    linear_optimizer: str = option("adam", "optimizer of the linear probe", STAGE2,
                                   choices=("sgd", "adam", "adamw", "rmsprop"))
    linear_lr: float = option(1e-2, "learning rate of the linear probe", STAGE2)
    linear_augment: str = option("none", "augmentation while training the linear probe (none: features are "
                                 "computed once)", STAGE2,
                                 choices=("none", "crop", "simclr", "autoaugment", "randaugment"))
    patience: int = option(10, "early stopping: epochs without a better --monitor value (0: off)",
                           STAGE2 + BASELINE)
    monitor: str = option("val_acc", "what early stopping watches (the best epoch's weights are restored)",
                          STAGE2 + BASELINE, choices=("val_acc", "val_loss"))
    head: str = option("softmax", "classifier of stage 2 and CE: softmax (one logit per class, cross-entropy) or "
                       "binary (two classes only: one logit, sigmoid and binary cross-entropy)", STAGE2 + BASELINE,
                       choices=("softmax", "binary"))
    # run
    run: str | None = option(None, "finished pretrain run directory whose encoder to probe; the probe is added to "
                             "it", ("linear",), metavar="DIR")
    encoder_from: str | None = option(None, "transfer: train a linear probe on the frozen encoder of this finished "
                                      "pretrain or ce run, on --dataset (resized to the encoder's input size), "
                                      "in a new run directory (--out); DIR itself is not changed", ("linear",),
                                      metavar="DIR")
    seed: int = option(0, "random seed (runs are deterministic on CPU)")
    device: str = option("auto", "device: auto (cuda, mps, then cpu), cpu, cuda, cuda:N, mps", runtime=True)
    amp: str = option("auto", "mixed precision on CUDA: auto (bf16 where supported), bf16, fp16, none",
                      choices=("auto", "bf16", "fp16", "none"))
    eval_batch_size: int = option(512, "batch size for evaluation and feature extraction", runtime=True)
    tsne: bool = option(True, "draw a t-SNE picture of the validation images' encoder embeddings (tsne.png; at "
                        f"most {TSNE_POINTS:,} points, a stratified subsample of larger splits)", runtime=True)
    logger: str = option("none", "also send the config, per-epoch metrics and pictures to tensorboard (RUN_DIR/"
                         "tensorboard/) or wandb (metrics.jsonl is always written)",
                         choices=("none", "tensorboard", "wandb"), runtime=True)
    wandb_project: str = option("supcon", "wandb project of --logger wandb", runtime=True)
    out: str | None = option(None, "run directory (default: runs/<command>-<dataset>-<time>); for linear only "
                             "with --encoder-from", NEW_RUN + ("linear",), metavar="DIR", runtime=True)
    quiet: bool = option(False, "no progress bars", runtime=True)
    # checkpoints
    ckpt_every: int = option(0, "also checkpoint every N optimizer steps, not only at the end of each epoch (0: "
                             "epochs only); a run killed mid-epoch then resumes from its last N-step mark",
                             metavar="N", runtime=True)
    keep_checkpoints: int = option(2, "checkpoints kept in RUN_DIR/checkpoints/ per stage, newest first; a damaged "
                                   "newest one falls back to the one before (0: no checkpoints, and no resuming); a "
                                   "stage deletes its own when it finishes", metavar="K", runtime=True)
    resume: str | None = option(None, "continue the run in RUN_DIR from its newest good checkpoint, with the options "
                                "of RUN_DIR/config.yaml (other flags may repeat them; only --quiet, --device, "
                                "--ckpt-every, --keep-checkpoints, --detect-anomaly and the like may change); "
                                "compare continues the stage it was in, keeping finished stages", RESUMABLE,
                                metavar="RUN_DIR", runtime=True, saved=False)
    detect_anomaly: bool = option(False, "debugging: run backward passes under torch.autograd.set_detect_anomaly, "
                                  "which names the operation that produced a NaN or inf (slow)", runtime=True)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value not in choices:
                raise ValueError(f"{f.name} must be one of {', '.join(choices)}; got {value!r}")
        positive = ["epochs", "batch_size", "temperature", "views", "proj_dim", "proj_hidden",
                    "linear_epochs", "linear_lr", "eval_batch_size", "step_epochs"]
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive; got {getattr(self, name)!r}")
        for name in ("image_size", "max_train", "max_val", "base_temperature", "grad_clip", "loss_block_size",
                     "chunk_size", "lr"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive; got {value!r}")
        if self.views < 1:
            raise ValueError(f"views must be at least 1; got {self.views}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be between 0 and 1; got {self.val_fraction}")
        if not 0 < self.crop_scale <= 1:
            raise ValueError(f"crop_scale must be in (0, 1]; got {self.crop_scale}")
        if self.weight_decay < 0 or self.warmup_epochs < 0 or self.patience < 0 or self.momentum < 0:
            raise ValueError("weight_decay, warmup_epochs, patience and momentum must not be negative")
        if self.ckpt_every < 0 or self.keep_checkpoints < 0:
            raise ValueError("ckpt_every and keep_checkpoints must not be negative")
        if self.resume is not None and self.keep_checkpoints == 0:
            raise ValueError("resume needs checkpoints; keep_checkpoints 0 turns them off")

    def resolved_lr(self) -> float:
        """The stage-1 and CE learning rate: ``lr`` when set, else the optimizer's usual default."""
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]

    # views of the config -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> Config:
        values = {k.replace("-", "_"): v for k, v in values.items()}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown option(s) in {source}: {', '.join(unknown)}; valid options: "
                             f"{', '.join(sorted(known))}")
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | Path) -> Config:
        return cls.from_dict(load_yaml(path), source=str(path))

    def save(self, path: str | Path) -> None:
        from supcon.io import atomic_write_text

        values = {k: v for k, v in self.to_dict().items() if k not in _UNSAVED}
        atomic_write_text(path, yaml.safe_dump(values, sort_keys=False))


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of option: value; got {type(values).__name__}")
    return values


_UNSAVED = {f.name for f in dataclasses.fields(Config) if not f.metadata["saved"]}


def runtime_options() -> set[str]:
    """Options that do not change what a run computes (see :func:`option`)."""
    return {f.name for f in dataclasses.fields(Config) if f.metadata["runtime"]}


def fields_for(command: str) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(Config) if command in f.metadata["commands"]]
