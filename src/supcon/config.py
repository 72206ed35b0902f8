"""One ``Config`` dataclass carries every option of every command.

The command-line flags, the ``--config`` YAML file and the ``config.yaml`` written into each run directory are
all views of this class: each field's metadata holds its help text, its allowed values and the commands it
applies to, so nothing about an option is written twice.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from supcon.methods import COMPARABLE
from supcon.options import (
    COMMANDS,
    check_data_options,
    check_distributable,
    check_encoder_name,
    check_options,
    option,
)

STAGE1 = ("pretrain", "compare", "sweep")
STAGE2 = ("linear", "compare", "sweep")
BASELINE = ("ce", "compare", "sweep")
TRAINING = COMMANDS
NEW_RUN = ("pretrain", "ce", "compare", "sweep")  # `linear` adds to an existing run: its encoder and dir are given
ONE_JOB = ("pretrain", "linear", "ce", "compare")  # the commands that train in one job (a sweep runs many jobs)
LR_REFERENCE_BATCH = 256  # the batch of Goyal et al.'s rule: lr = base_lr x batch / 256
# The usual starting points: SGD with momentum at 0.1 for batch 128-256 (He et al. 2016, and the SupCon reference
# code's CE and contrastive recipes scaled to that batch); the adaptive methods at their libraries' default.
DEFAULT_LR = {"sgd": 0.1, "adam": 1e-3, "adamw": 1e-3, "rmsprop": 1e-3}
# What --optimizer auto trains each method with: the optimizer under which that method did best across the three
# shared photo data sets in the study's grid (docs/results.md), each at its usual rate.
AUTO_OPTIMIZER = {"supcon": "sgd", "ce": "adamw"}
TSNE_POINTS = 2000  # t-SNE is quadratic-ish in the points; a few thousand keep a picture under a minute on a CPU
MAP_POINTS = 1000  # the HTML report's embedding maps: each point carries a thumbnail, and a page of a few MB opens fast


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
    store_size: int | None = option(None, "folder: and the named photo sets: the size the files are decoded to, "
                                    "once, into a memory-mapped cache in --data-dir (default: twice --image-size, "
                                    "so that the random crops come from images finer than the ones trained on; "
                                    "the files' own size without --image-size)", metavar="PX")
    val_crop: float = option(0.875, "where the images are stored larger than --image-size: the centre share of each "
                             "that validation, test and prediction see, resized to --image-size (torchvision's "
                             "references: 224 of 256)")
    val_fraction: float = option(0.15, "validation share, carved (stratified) from the training images; the "
                                 "validation split alone picks epochs, cells and defaults")
    test_fraction: float = option(0.15, "test share, carved (stratified) from all the images, where the data set "
                                  "has no held-out split of its own (an npz's x_test, a folder's test/ or val/, "
                                  "CIFAR's test set are the test split); test is evaluated once, after training")
    split_seed: int = option(0, "seed of the train/val/test carving, the subsampling and the label noise: fixed, "
                             "so that --seed and --seeds vary the training and not the data")
    max_train: int | None = option(None, "use at most this many training images (stratified; for quick runs)",
                                   metavar="N")
    max_val: int | None = option(None, "use at most this many validation images (stratified)", metavar="N")
    max_test: int | None = option(None, "use at most this many test images (stratified)", metavar="N")
    label_noise: float = option(0.0, "robustness studies: replace this share of the training and validation labels "
                                "by a wrong class before training (exactly round(P x N) of each split's N labels, "
                                "chosen with --split-seed; the test split stays clean); see --label-noise-mode",
                                metavar="P")
    label_noise_mode: str = option("sym", "how --label-noise picks the wrong class: sym (one of the other classes "
                                   "at random) or asym (class c becomes class c+1 mod K, a fixed confusion)",
                                   choices=("sym", "asym"))
    # model
    encoder: str = option("auto", "encoder: resnet18/34/50/101/152, smallcnn, auto (smallcnn below 32 px, else "
                          "resnet18), or timm:NAME, any model of the timm library without its classifier "
                          "(pip install 'supcon[timm]'; randomly initialised unless --pretrained)", NEW_RUN,
                          metavar="NAME")
    pretrained: str | None = option(None, "start the encoder from the weights in this local .safetensors file "
                                    "(timm's or torchvision's checkpoint of the same architecture, or a run's "
                                    "encoder.safetensors; a classifier in it is ignored); nothing is downloaded",
                                    NEW_RUN, metavar="FILE")
    stem: str = option("auto", "ResNet stem: imagenet (7x7/2 + max-pool), cifar (3x3/1, no pool), auto "
                       "(cifar up to 32 px); torchvision ResNets only", NEW_RUN, choices=("auto", "imagenet", "cifar"))
    projection: str = option("mlp", "projection head: mlp (one hidden layer) or linear", STAGE1,
                             choices=("mlp", "linear"))
    proj_hidden: int = option(2048, "hidden width of the mlp projection head", STAGE1)
    proj_dim: int = option(128, "output size of the projection head", STAGE1)
    # stage 1 / CE optimisation
    epochs: int = option(30, "epochs of stage 1 (SupCon) and of the CE baseline", STAGE1 + ("ce",))
    batch_size: int = option(64, "images per batch (each gives --views views in stage 1); in a distributed run the "
                             "global batch, split over the processes")
    optimizer: str = option("auto", "optimizer for stage 1 and CE; auto: SGD (momentum 0.9) for stage 1, AdamW for "
                            "CE, the optimizer each method did best with on the shared data sets",
                            STAGE1 + ("ce",), choices=("auto", "sgd", "adam", "adamw", "rmsprop"))
    lr: float | None = option(None, "learning rate for stage 1 and CE (default: by optimizer, sgd 0.1, adam, adamw "
                              "and rmsprop 0.001)", STAGE1 + ("ce",), metavar="LR")
    momentum: float = option(0.9, "momentum (sgd, rmsprop)", STAGE1 + ("ce",))
    nesterov: bool = option(False, "Nesterov momentum (sgd)", STAGE1 + ("ce",))
    weight_decay: float = option(1e-4, "weight decay for stage 1 and CE", STAGE1 + ("ce",))
    schedule: str = option("cosine", "learning-rate schedule", choices=("fixed", "cosine", "step"))
    step_epochs: int = option(30, "epochs between decays of the 'step' schedule")
    step_gamma: float = option(0.1, "decay factor of the 'step' schedule")
    lr_scale: str = option("none", f"scale every learning rate (--lr, --linear-lr) with the batch: linear "
                           f"(x batch/{LR_REFERENCE_BATCH}), sqrt (x sqrt(batch/{LR_REFERENCE_BATCH})) or none; "
                           "pair linear with --warmup-epochs at large batches", choices=("none", "linear", "sqrt"))
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
    loss: str = option("supcon", "stage-1 loss: supcon (L_out), supcon_in (L_in), simclr (labels ignored), "
                       "maxmargin (pairwise max-margin, what the study's notebooks trained with), npairs (the "
                       "Keras example's multi-class N-pair loss), or supcon+ce (SupCon on the projection and CE on a "
                       "linear classifier over the encoder's features, in one stage; see --ce-weight)", STAGE1,
                       choices=("supcon", "supcon_in", "simclr", "maxmargin", "npairs", "supcon+ce"))
    ce_weight: float = option(0.1, "--loss supcon+ce trains on (1 - W) x SupCon + W x CE; 0.1 is Gunel et al. "
                              "(2021)'s best weighting (lambda = 0.9 on the contrastive term)", STAGE1, metavar="W")
    ce_stop_grad: bool = option(False, "--loss supcon+ce: stop CE's gradient at the encoder's features, so that only "
                                "SupCon shapes them and the classifier learns on the side (the SupCon paper's joint "
                                "variant)", STAGE1)
    queue: int = option(0, "a memory of the last K projected embeddings and their labels, made by a momentum copy of "
                        "the encoder and head (MoCo-style), used as extra contrast vectors by the supcon losses: "
                        "more positives and negatives per step at a small batch (0: off)", STAGE1, metavar="K")
    momentum_encoder: float = option(0.999, "momentum of the copy that fills --queue: after each step its weights "
                                     "become M x its own + (1 - M) x the trained ones", STAGE1, metavar="M")
    temperature: float = option(0.1, "temperature of the contrastive loss (supcon, supcon_in, simclr, npairs)",
                                STAGE1)
    margin: float = option(1.0, "margin of the maxmargin loss: negative pairs closer than this are pushed apart",
                           STAGE1)
    margin_distance: str = option("euclidean", "distance of the maxmargin loss: euclidean (the study's; sqrt(2 - 2 "
                                  "cos) on the unit sphere) or cosine (1 - cos)", STAGE1,
                                  choices=("euclidean", "cosine"))
    base_temperature: float | None = option(None, "loss is scaled by temperature/base_temperature "
                                            "(default: no scaling)", STAGE1, metavar="T")
    contrast_mode: str = option("all", "anchors: every view (all) or view 0 only (one)", STAGE1,
                                choices=("all", "one"))
    loss_block_size: int | None = option(None, "anchor rows per block in the loss, bounding its memory "
                                         "(default: automatic, from N)", STAGE1, metavar="ROWS")
    # kNN monitor
    knn_every: str = option("auto", "kNN accuracy of the validation split's encoder features against the training "
                            "split's every N epochs of stage 1 and at its last (metrics.jsonl knn_acc); auto: every "
                            "epoch when stage 1 stops on it (--patience above 0), else every epoch where it costs "
                            "under a tenth of an epoch, or every 5; 0: off (also the final kNN of ce runs)",
                            STAGE1 + ("ce",), metavar="N|auto")
    knn_k: int = option(20, "neighbours of the kNN monitor", STAGE1 + ("ce",))
    knn_temperature: float = option(0.07, "the kNN monitor weighs each neighbour's vote by exp(similarity / T)",
                                    STAGE1 + ("ce",), metavar="T")
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
    stage2: str = option("linear", "stage 2: linear (a linear classifier on the frozen encoder, as in the study) or "
                         "finetune (the encoder and the classifier trained together with cross-entropy from the "
                         "stage-1 weights, the encoder at --finetune-lr, with --augment)", STAGE2,
                         choices=("linear", "finetune"))
    finetune_lr: float = option(1e-4, "learning rate of the encoder when --stage2 finetune (the classifier keeps "
                                "--linear-lr): a hundredth of the classifier's, so that fine-tuning adjusts the "
                                "stage-1 features rather than relearning them", STAGE2)
    tune: bool = option(False, "compare: first give every method the same trials on the first seed (its "
                        "learning rate at a third of, at, and at three times its default; with --optimizer auto "
                        "also the other optimizer family at its usual rate), choose each one's on val accuracy, "
                        "then train every seed with it (the first seed's run is the chosen trial)", ("compare",))
    methods: str = option("ce,supcon", "compare: the methods trained side by side, comma-separated: ce (the "
                          "baseline), supcon (stage 1 + linear probe), supcon-finetune (stage 1, then fine-tuned "
                          "with CE), supcon+ce (the joint objective)", ("compare",), metavar="LIST")
    linear_augment: str = option("none", "augmentation while training the linear probe (none: features are "
                                 "computed once)", STAGE2,
                                 choices=("none", "crop", "simclr", "autoaugment", "randaugment"))
    patience: int = option(10, "the stopping policy of every stage: it stops after this many epochs without a "
                           "better validation score and restores its best epoch (stage 1 watches its kNN "
                           "accuracy, the others --monitor); 0: every stage trains its whole budget and keeps its "
                           "last epoch", STAGE1 + STAGE2 + BASELINE)
    monitor: str = option("val_acc", "what the stopping policy watches in stage 2 and CE (and in stage 1 of the "
                          "joint objective)", STAGE2 + BASELINE, choices=("val_acc", "val_loss"))
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
    seed: int = option(0, "random seed of the training: initial weights, shuffles, augmentation (runs are "
                       "deterministic on CPU)", metavar="N")
    seeds: int = option(1, "train every method (or sweep cell) with this many seeds, --seed, --seed + 1, ...; the "
                        "test accuracy is then a mean with a 95 percent t-interval over the seeds",
                        ("compare", "sweep"), metavar="K")
    device: str = option("auto", "device: auto (cuda, mps, then cpu), cpu, cuda, cuda:N, mps", metavar="DEVICE",
                         runtime=True)
    amp: str = option("auto", "mixed precision on CUDA: auto (bf16 where supported), bf16, fp16, none",
                      choices=("auto", "bf16", "fp16", "none"))
    eval_batch_size: int = option(512, "batch size for evaluation and feature extraction", metavar="N",
                                  runtime=True)
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
                                "compare continues the stage it was in, keeping finished stages", ONE_JOB,
                                metavar="RUN_DIR", runtime=True, saved=False)
    detect_anomaly: bool = option(False, "debugging: run backward passes under torch.autograd.set_detect_anomaly, "
                                  "which names the operation that produced a NaN or inf (slow)", runtime=True)
    # distributed
    max_restarts: int = option(0, "with --nproc: restart every process up to N times when one dies (torchrun's "
                               "elastic agent); the restarted ones continue from the run's newest checkpoint",
                               ONE_JOB, metavar="N", runtime=True)
    nproc: int = option(1, "train on N processes of this machine with DistributedDataParallel: runs torchrun "
                        "--standalone --nproc-per-node N for this same command (one GPU each on CUDA, else CPU "
                        "processes with gloo); ignored inside torchrun, which already chose the processes",
                        ONE_JOB, metavar="N", runtime=True)
    sync_bn: bool = option(False, "synchronise BatchNorm statistics across the processes of a distributed run "
                           "(CUDA only)", STAGE1 + ("ce",))

    def __post_init__(self) -> None:
        if isinstance(self.knn_every, int) and not isinstance(self.knn_every, bool):
            self.knn_every = str(self.knn_every)  # `knn_every: 5` in a YAML file; config.yaml stores the string
        self._coerce_types()
        self.validate()

    def _coerce_types(self) -> None:
        """Check every value against its field's type, converting the harmless mismatches.

        YAML is loose: PyYAML reads ``1e-3`` as a string (it wants ``1.0e-3``), ``30.0`` as a float and ``10``
        as an int where a float is meant. Anything else of the wrong type fails here, in one line, rather
        than as a TypeError deep inside training.
        """
        for f in dataclasses.fields(self):
            setattr(self, f.name, _coerce(f.name, getattr(self, f.name), _HINTS[f.name]))

    def validate(self) -> None:
        check_options(self, positive=("epochs", "batch_size", "temperature", "views", "proj_dim", "proj_hidden",
                                      "linear_epochs", "linear_lr", "eval_batch_size", "step_epochs", "margin",
                                      "knn_k", "knn_temperature", "nproc", "seeds", "finetune_lr",
                                      "base_temperature", "grad_clip", "loss_block_size", "chunk_size", "lr"))
        check_encoder_name(self.encoder)
        check_data_options(self)
        if not 0 <= self.label_noise < 1:
            raise ValueError(f"label_noise must be in [0, 1) (a share of the training labels); got {self.label_noise}")
        if not 0 < self.val_crop <= 1:
            raise ValueError(f"val_crop must be in (0, 1] (a share of the stored image); got {self.val_crop}")
        if not 0 < self.crop_scale <= 1:
            raise ValueError(f"crop_scale must be in (0, 1]; got {self.crop_scale}")
        if not (self.knn_every == "auto" or (isinstance(self.knn_every, str) and self.knn_every.isdigit())):
            raise ValueError(f"knn_every must be auto or a whole number of epochs (0: off); got {self.knn_every!r}")
        if self.nproc > 1:
            check_distributable(self.loss)
        if self.contrast_mode != "all" and self.loss in ("maxmargin", "npairs"):
            raise ValueError(f"contrast_mode {self.contrast_mode} is an option of the supcon, supcon_in and simclr "
                             f"losses; {self.loss} takes every view as an anchor")
        self._validate_supcon_forms()
        if self.weight_decay < 0 or self.warmup_epochs < 0 or self.patience < 0 or self.momentum < 0:
            raise ValueError("weight_decay, warmup_epochs, patience and momentum must not be negative")
        if self.ckpt_every < 0 or self.keep_checkpoints < 0:
            raise ValueError("ckpt_every and keep_checkpoints must not be negative")
        if self.resume is not None and self.keep_checkpoints == 0:
            raise ValueError("resume needs checkpoints; keep_checkpoints 0 turns them off")

    def _validate_supcon_forms(self) -> None:
        if not 0 <= self.ce_weight <= 1:
            raise ValueError(f"ce_weight must be in [0, 1] (the CE share of the joint loss); got {self.ce_weight}")
        if not 0 <= self.momentum_encoder < 1:
            raise ValueError(f"momentum_encoder must be in [0, 1); got {self.momentum_encoder}")
        if self.queue < 0:
            raise ValueError(f"queue must not be negative (0: off); got {self.queue}")
        if self.queue and self.loss not in ("supcon", "supcon_in", "supcon+ce"):
            raise ValueError(f"--queue needs a supervised supcon loss (supcon, supcon_in, supcon+ce); got {self.loss}")
        if self.queue and self.nproc > 1:
            raise ValueError("--queue does not run distributed yet: each process would keep a queue of its own")
        if self.queue and self.chunk_size is not None:
            raise ValueError("--queue and --chunk-size do not go together yet: the gradient cache takes the loss of "
                             "the batch alone")
        if self.loss == "supcon+ce" and self.nproc > 1:
            raise ValueError("--loss supcon+ce does not run distributed yet")
        methods = self.method_list()
        unknown = [m for m in methods if m not in COMPARABLE]
        if unknown or not methods or len(set(methods)) < len(methods):
            raise ValueError(f"methods must be distinct names among {', '.join(COMPARABLE)}, comma-separated; got "
                             f"{self.methods!r}")

    def method_list(self) -> list[str]:
        """``methods`` as a list: the methods a comparison trains."""
        return [m.strip() for m in self.methods.split(",") if m.strip()]

    def lr_factor(self) -> float:
        """What ``lr_scale`` multiplies every learning rate by, from the (global) ``batch_size``."""
        ratio = self.batch_size / LR_REFERENCE_BATCH
        return {"none": 1.0, "linear": ratio, "sqrt": ratio ** 0.5}[self.lr_scale]

    def resolved_optimizer(self, method: str = "supcon") -> str:
        """The optimizer that trains ``method`` (``supcon``: stage 1, ``ce``: the baseline): ``optimizer``, or
        with ``auto`` the one in :data:`AUTO_OPTIMIZER`."""
        return AUTO_OPTIMIZER["ce" if method == "ce" else "supcon"] if self.optimizer == "auto" else self.optimizer

    def resolved_lr(self, method: str = "supcon") -> float:
        """The learning rate of stage 1 (or of CE, ``method="ce"``): ``lr`` when set, else the usual rate of the
        optimizer that trains it; scaled by ``lr_scale``."""
        lr = self.lr if self.lr is not None else DEFAULT_LR[self.resolved_optimizer(method)]
        return lr * self.lr_factor()

    def resolved_linear_lr(self) -> float:
        """The linear probe's learning rate: ``linear_lr`` scaled by ``lr_scale``."""
        return self.linear_lr * self.lr_factor()

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
        from supcon.io import atomic_write_text  # here: supcon.io loads torch, which `supcon --help` must not

        values = {k: v for k, v in self.to_dict().items() if k not in _UNSAVED}
        atomic_write_text(path, yaml.safe_dump(values, sort_keys=False))


_HINTS = typing.get_type_hints(Config)
_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _coerce(name: str, value: Any, hint: Any) -> Any:
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    members = typing.get_args(hint) if union else (hint,)
    kinds = [k for k in members if k is not type(None)]
    kind, optional = (kinds[0] if len(kinds) == 1 else None), type(None) in members
    if kind not in _KINDS:  # a field of another type (a list, say) checks itself in validate()
        return value
    if value is None:
        if optional:
            return None
        raise ValueError(f"{name} must be {_KINDS[kind]}; got nothing (an empty value in YAML?)")
    bad = ValueError(f"{name} must be {_KINDS[kind]}{' or null' if optional else ''}; got {value!r} "
                     f"({type(value).__name__})")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _BOOL_WORDS:
            return _BOOL_WORDS[value.strip().lower()]
        raise bad
    if kind is str:
        if isinstance(value, str):
            return value
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        raise bad
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, str)):
        raise bad
    if isinstance(value, str):
        try:
            value = float(value.strip()) if kind is float else int(value.strip())
        except ValueError:
            raise bad from None
    if kind is int:
        if isinstance(value, numbers.Integral):
            return int(value)
        if math.isfinite(value) and float(value).is_integer():
            return int(value)
        raise bad
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number; got {value!r}")
    return float(value)


_BOOL_WORDS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text())
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text file (expected YAML: one 'option: value' a line)") from None
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of option: value; got {type(values).__name__}")
    odd = [k for k in values if not isinstance(k, str)]
    if odd:
        raise ValueError(f"{path}: option names must be words, got {odd[0]!r}; expected 'option: value' lines")
    return values


_UNSAVED = {f.name for f in dataclasses.fields(Config) if not f.metadata["saved"]}


def result_neutral_options() -> set[str]:
    """The options that do not change what a run computes (``runtime`` in :func:`option`): where it runs, what it
    prints or draws, how it is checkpointed. The one list that resuming, the sweep's finished cells, checkpoints
    and reports consult."""
    return {f.name for f in dataclasses.fields(Config) if f.metadata["runtime"]}


def fields_for(command: str) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(Config) if command in f.metadata["commands"]]


def shared(name: str, help: str | None = None, **changes) -> Any:
    """A tool command's option that is also the Config's ``name``: the same default (and help, unless given), so
    that ``supcon predict --batch-size`` and ``eval_batch_size`` never disagree."""
    f = next(f for f in dataclasses.fields(Config) if f.name == name)
    meta = f.metadata
    return option(f.default, help or meta["help"], commands=(), choices=meta["choices"], metavar=meta["metavar"],
                  **changes)
