"""The building blocks of every option: the field that carries an option's help, choices and commands (the
command line's flags are made from these), and the checks that the :class:`~supcon.config.Config` and the tool
commands' options share, each written once."""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import field
from typing import Any

COMMANDS = ("pretrain", "linear", "ce", "compare", "sweep")  # the training commands, whose options are a Config's
TOOL = ()  # the commands field of a tool command's option: no training command takes it


def option(default: Any, help: str, commands=COMMANDS, choices=None, metavar=None, runtime: bool = False,
           saved: bool = True, flag: str | None = None, items: type | None = None) -> Any:
    """A field of :class:`Config` or of a tool command's options (:class:`PredictOptions`, ...); the command line's
    flags are made from these. ``runtime``: the option does not change what a run computes (where it runs, what it
    prints or draws, how it is checkpointed), so a resumed run may give it another value. ``saved=False`` keeps
    it out of ``config.yaml`` (an option about this invocation, not about the run). ``flag``: the flag's name where
    it is not the field's (``--eps`` for ``epsilons``); ``items``: the value is a comma-separated list of these."""
    default_value = {"default_factory": lambda: list(default)} if isinstance(default, (list, tuple)) \
        else {"default": default}
    return field(**default_value,
                 metadata={"help": help, "commands": tuple(commands), "choices": choices, "metavar": metavar,
                           "runtime": runtime, "saved": saved, "flag": flag, "items": items})


# --encoder: auto, one of these, or timm:NAME (supcon.models builds them; named here so that a typo fails before
# training)
ENCODERS = ("smallcnn", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
TIMM = "timm:"  # --encoder timm:NAME: any model of the timm library, without its classifier


PAIRWISE_LOSSES = ("maxmargin", "npairs")  # no anchors= option: they cannot run on a gathered batch


def check_distributable(loss: str) -> None:
    """A one-line ValueError for a stage-1 loss that cannot split a global batch between processes."""
    if loss in PAIRWISE_LOSSES:
        raise ValueError(f"--loss {loss} does not run distributed: only the supcon, supcon_in and simclr losses can "
                         "split the global batch's anchors between processes")


def check_data_options(options: Any) -> None:
    """A one-line ValueError for data options out of range: sizes and subsample caps positive whole numbers (or
    None), the validation and test shares in (0, 1) with images left to train on. The Config and
    :class:`supcon.data.LoadOptions` are both checked here."""
    for key in ("val_fraction", "test_fraction"):
        value = getattr(options, key)
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < 1:
            raise ValueError(f"{key} must be between 0 and 1; got {value!r}")
    if options.val_fraction + options.test_fraction >= 1:
        raise ValueError(f"val_fraction + test_fraction must leave images to train on; got {options.val_fraction} "
                         f"+ {options.test_fraction}")
    for key in ("image_size", "store_size", "max_train", "max_val", "max_test"):
        value = getattr(options, key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1):
            raise ValueError(f"{key} must be positive (a whole number) or None; got {value!r}")


def check_encoder_name(name: str) -> None:
    """A one-line ValueError unless ``name`` is ``auto``, one of :data:`ENCODERS` or ``timm:NAME``."""
    if name not in ("auto", *ENCODERS) and not (name.startswith(TIMM) and len(name) > len(TIMM)):
        raise ValueError(f"encoder must be one of auto, {', '.join(ENCODERS)}, or timm:NAME (a timm model); got "
                         f"{name!r}")
def check_options(options: Any, positive: tuple[str, ...] = ()) -> None:
    """A one-line ValueError for an option outside its ``choices`` or, among ``positive``, not above 0."""
    for f in dataclasses.fields(options):
        choices, value = f.metadata.get("choices"), getattr(options, f.name)
        if choices and value not in choices:
            raise ValueError(f"{f.name} must be one of {', '.join(choices)}; got {value!r}")
    for name in positive:
        value = getattr(options, name)
        if value is not None and (isinstance(value, bool) or not value > 0):
            raise ValueError(f"{name} must be positive; got {value!r}")
