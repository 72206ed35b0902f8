"""A command's options, layered: the Config's defaults, a run directory's ``config.yaml`` (``linear`` on an
existing run, ``--resume``), a YAML file, then the flags given. The command line and a Python caller build the
same :class:`~supcon.config.Config` here.

>>> from supcon.runs.options import options_for
>>> cfg = options_for("compare", {"epochs": 5}, config_file="my.yaml")
>>> cfg = options_for("ce", {"resume": "runs/ce-digits"})      # that run's own options, checked
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from supcon.config import Config, fields_for, load_yaml, result_neutral_options
from supcon.runs.rundir import RunDir

SWEEP_KEYS = ("grid", "ce_grid", "variants")  # a sweep file's own keys, beside the options of its base config


def options_for(command: str, flags: dict[str, Any], config_file: str | Path | None = None) -> Config:
    """The options of ``supcon COMMAND``; ``flags`` are the options given on the command line (names with ``_``).

    Layers, lowest first: the defaults, the ``config.yaml`` of a ``linear`` run's ``--run``/``--encoder-from``
    directory, the YAML ``config_file``, then ``flags``. With ``resume`` among the flags the run's own options
    are taken instead (:func:`resume_options`). An option the command does not use is a one-line error.
    """
    if flags.get("resume") is not None:
        return resume_options(command, flags, config_file)
    values: dict[str, Any] = {}
    if command == "linear":
        values.update(_probe_base(flags))
    if config_file:
        values.update({k: v for k, v in load_yaml(config_file).items() if k not in SWEEP_KEYS})
    values.update(flags)
    allowed = {f.name for f in fields_for(command)} | ({f.name for f in dataclasses.fields(Config)}
                                                       if command == "linear" else set())
    source = str(config_file) if config_file else "config"
    unknown = sorted(set(k.replace("-", "_") for k in values) - allowed)
    if unknown:
        raise ValueError(f"option(s) not used by '{command}' in {source}: {', '.join(unknown)}; valid "
                         f"options: {', '.join(sorted(allowed))}")
    return Config.from_dict(values, source=source)


def _probe_base(flags: dict[str, Any]) -> dict[str, Any]:
    """What ``linear`` starts from: the options of the run it probes (``--run``) or transfers (``--encoder-from``)."""
    run, source = flags.get("run"), flags.get("encoder_from")
    if run is None and source is None:
        raise ValueError("linear needs --run DIR, the directory of a finished pretrain run (or --encoder-from "
                         "DIR to train a probe on DIR's encoder on another --dataset)")
    if run is not None and source is not None:
        raise ValueError("give --run DIR (add a probe to DIR) or --encoder-from DIR (a new run), not both")
    if run is not None and "out" in flags:
        raise ValueError("--out goes with --encoder-from; --run DIR writes into DIR")
    loaded = RunDir(run or source).config_values()
    if source is not None:  # the transfer run starts from the source's options, but is a run of its own
        # (and on data of its own: the source's label noise was a property of its training labels)
        loaded = {k: v for k, v in loaded.items()
                  if k not in ("out", "run", "encoder_from", "label_noise", "label_noise_mode")}
    return loaded


def resume_options(command: str, flags: dict[str, Any], config_file: str | Path | None = None) -> Config:
    """The options of ``--resume RUN_DIR``: RUN_DIR's ``config.yaml``. Flags may repeat its values; only options
    that do not change what the run computes may differ, so that the resumed run is the run that was started."""
    run = RunDir(flags["resume"])
    if config_file:
        raise ValueError("--resume takes the run's options from RUN_DIR/config.yaml; leave out --config")
    if not run.file("config.yaml").is_file():
        raise ValueError(f"nothing to resume in {run.path}: no config.yaml (is it the directory the run wrote?)")
    saved = run.config()
    commands = run.commands()  # a SupCon run is continued by `pretrain` and by `linear`, which adds its probe
    if commands and command not in commands:
        raise ValueError(f"{run.path} holds a {run.method()} run; resume it with: supcon {commands[0]} --resume "
                         f"{run.path}")
    changeable = result_neutral_options()
    for key, value in flags.items():
        if key in ("out", "run", "encoder_from") and value is not None:
            same = Path(value) == run.path if key != "encoder_from" else value == saved.encoder_from
            if not same:
                raise ValueError(f"--{key.replace('_', '-')} {value} does not match --resume {run.path}; "
                                 "leave it out")
        elif key == "methods" and command == "compare" and _adds_methods(saved.methods, value):
            continue  # more forms beside the finished ones: each method's runs are its own
        elif key not in changeable and getattr(saved, key) != value:
            raise ValueError(f"--resume continues {run.path} with its own options: --{key.replace('_', '-')} "
                             f"{value} differs from its config.yaml ({getattr(saved, key)}); leave it out (only "
                             f"{', '.join('--' + k.replace('_', '-') for k in sorted(changeable - {'out', 'resume'}))}"
                             " may change)")
    cfg = saved.replace(**{k: v for k, v in flags.items() if k in changeable or k == "methods"})
    if command == "linear" and saved.encoder_from is None:
        return cfg.replace(run=str(run.path))  # a probe added to RUN_DIR (config.yaml written by pretrain or linear)
    return cfg.replace(out=str(run.path))


def _adds_methods(saved: str, given: str | None) -> bool:
    """Whether ``--methods`` keeps every method of the saved comparison (and may add some)."""
    if given is None:
        return False
    split = lambda text: {m.strip() for m in text.split(",") if m.strip()}  # noqa: E731
    return split(given) >= split(saved)


def resume_dir(command: str, cfg: Config) -> Path | None:
    """The run directory that ``supcon COMMAND`` writes and ``--resume`` continues."""
    if command == "linear" and cfg.run is not None:
        return Path(cfg.run)
    return Path(cfg.out) if cfg.out else None
