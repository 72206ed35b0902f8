"""The registry of methods: what each one trains, in which stages, and how every table and picture names it.

A method is what ``compare --methods`` names and what a run's summary records as ``"method"``: the
cross-entropy baseline, SupCon with a linear probe or with fine-tuning, the joint SupCon + CE objective, SimCLR,
and a transfer (stage 2 on the encoder of another run). :func:`supcon.stages.train_run` runs a method's
``stages`` in order; tables, notes, pictures, ``RunDir`` and the resume checks read their names from here.

>>> from supcon.config import Config
>>> from supcon.methods import METHODS, method_for
>>> METHODS["supcon-finetune"].stages
('pretrain', 'finetune')
>>> method_for(Config(loss="simclr")).name
'simclr'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# The registry sits below supcon.config, which checks `--methods` against it: a config here is any object with
# the options (a Config; the loss, stage2 and encoder_from of a run's config.yaml), never imported.
Config = Any

# How tables and picture titles name each stage-1 loss.
LOSS_TITLES = {"supcon": "SupCon", "supcon_in": "SupCon (L_in)", "simclr": "SimCLR", "maxmargin": "max-margin",
               "npairs": "npairs", "supcon+ce": "SupCon + CE"}
SECOND_STAGES = ("linear", "finetune")


@dataclass(frozen=True)
class Method:
    """One method. ``stages`` run in order in one run directory (``pretrain``: stage 1; ``linear`` / ``finetune``:
    stage 2 on the encoder so far; ``ce``: the baseline). ``loss`` and ``stage2`` are the options the method fixes
    (None: the config's). ``borrows_encoder``: its encoder comes from another run (``--encoder-from``) rather than
    from a stage of its own. ``commands`` are the ``supcon`` commands that make (and resume) such a run alone."""

    name: str
    title: str
    encoder_title: str
    stages: tuple[str, ...]
    commands: tuple[str, ...]
    loss: str | None = None
    stage2: str | None = None
    borrows_encoder: bool = False
    loss_in_title: bool = False  # the title names the config's stage-1 loss where it is not SupCon's

    def configure(self, cfg: Config) -> Config:
        """``cfg`` with the options this method fixes."""
        changes = {k: v for k, v in (("loss", self.loss), ("stage2", self.stage2)) if v is not None}
        return cfg.replace(**changes) if changes else cfg

    def stages_for(self, cfg: Config) -> tuple[str, ...]:
        """The stages a run of this method trains under ``cfg``: a second stage the method leaves open (a
        transfer's, SimCLR's) is ``cfg.stage2``."""
        if self.stage2 is None and self.stages[-1] in SECOND_STAGES:
            return (*self.stages[:-1], cfg.stage2)
        return self.stages

    def describe(self, loss: str) -> str:
        """The progress line of a comparison for this method with stage-1 loss ``loss``."""
        if "pretrain" not in self.stages:
            return f"{self.title} baseline"
        if len(self.stages) == 1:
            return f"{self.title}: one stage"
        stage2 = "fine-tuning" if self.stages[-1] == "finetune" else "linear probe"
        return f"{LOSS_TITLES[loss]}: stage 1 (contrastive) then stage 2 ({stage2})"

    @property
    def trains_stage1(self) -> bool:
        return "pretrain" in self.stages


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("ce", "cross-entropy", "cross-entropy encoder", ("ce",), ("ce",)),
    Method("supcon", "SupCon + linear", "SupCon encoder", ("pretrain", "linear"), ("pretrain", "linear"),
           stage2="linear", loss_in_title=True),
    Method("supcon-finetune", "SupCon + fine-tuning", "SupCon + fine-tuning encoder", ("pretrain", "finetune"),
           ("pretrain", "linear"), stage2="finetune", loss_in_title=True),
    Method("supcon+ce", "SupCon + CE, joint", "SupCon + CE, joint encoder", ("pretrain",), ("pretrain",),
           loss="supcon+ce"),
    Method("simclr", "SimCLR + linear", "SimCLR encoder", ("pretrain", "linear"), ("pretrain", "linear"),
           loss="simclr"),
    Method("transfer", "transfer", "transferred encoder", ("linear",), ("linear",), borrows_encoder=True),
)}
# What `compare --methods` may train, in the order they train and are shown (SupCon's forms first: a fine-tuned
# SupCon continues the linear one's stage 1; cross-entropy last).
COMPARABLE = ("supcon", "supcon-finetune", "supcon+ce", "ce")


def get_method(name: str | Method) -> Method:
    """The method of that name (a one-line error naming the known ones otherwise)."""
    if isinstance(name, Method):
        return name
    if name not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {name!r}")
    return METHODS[name]


def method_for(cfg: Config) -> Method:
    """The method a single-run command trains under ``cfg`` (``pretrain``, ``linear``): its stage-1 loss and stage 2
    decide it; an encoder from another run makes it a transfer."""
    if cfg.encoder_from:
        return METHODS["transfer"]
    if cfg.loss in ("supcon+ce", "simclr"):
        return METHODS[cfg.loss]
    return METHODS["supcon-finetune" if cfg.stage2 == "finetune" else "supcon"]


def encoder_method(summary: dict[str, Any]) -> str:
    """The method that trained a run's encoder: its own, or for a run that borrowed it, the source's."""
    return summary.get("encoder_method") or summary["method"]


def run_title(summary: dict[str, Any]) -> str:
    """How a table names a run: its method's title, with its stage-1 loss where that is not SupCon's (``max-margin
    + linear``), and ``<encoder> + linear`` for stage 2 on an encoder trained by another run."""
    method = METHODS.get(summary.get("method"))
    if method is None:
        return str(summary.get("method"))
    if method.borrows_encoder:
        source = METHODS.get(encoder_method(summary))
        what = "fine-tuning" if summary.get("stage2") == "finetune" else "linear"
        return f"{source.encoder_title if source else 'encoder'} + {what}"
    title = method.title
    loss = summary.get("loss")
    if method.loss_in_title and loss not in (None, "supcon"):
        title = title.replace("SupCon", LOSS_TITLES.get(loss, loss), 1)
    return title


def encoder_title(summary: dict[str, Any]) -> str:
    """How a picture names a run's encoder (``SupCon encoder``, ``cross-entropy encoder``)."""
    method = METHODS.get(encoder_method(summary))
    return method.encoder_title if method is not None else "encoder"


def verdict_name(method: str) -> str:
    """How a verdict names a method against CE: ``SupCon`` for the plain form, else its title."""
    return "SupCon" if method == "supcon" else get_method(method).title


def upgrade_method(summary: dict[str, Any]) -> dict[str, Any]:
    """A run summary written before runs recorded their method by this registry, in today's terms: a
    comparison's ``form`` is the method; a probe on another run's encoder (``encoder_from``) is a ``transfer``
    whose ``encoder_method`` was the source's; the joint loss and fine-tuning are methods of their own."""
    if "method" not in summary:
        return summary
    summary, old = dict(summary), summary["method"]
    if "form" in summary:
        summary["method"] = summary.pop("form")
    elif summary.get("encoder_from") and old in ("supcon", "simclr", "ce") and "encoder_method" not in summary:
        summary["method"] = "transfer"
    elif old == "supcon" and summary.get("loss") == "supcon+ce":
        summary["method"] = "supcon+ce"
    elif old == "supcon" and summary.get("stage2") == "finetune":
        summary["method"] = "supcon-finetune"
    if summary["method"] != old and summary.get("encoder_from"):
        summary.setdefault("encoder_method", old)
    return summary
