"""``compare``: SupCon (both stages) against the cross-entropy baseline on one data set, same budget.

Writes ``OUT/ce/`` and ``OUT/supcon/`` (each a complete run directory), and in ``OUT/`` the resolved
``config.yaml``, the combined ``results.json``, ``results.md`` (the table) and ``tsne.png``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from supcon import train
from supcon.config import Config
from supcon.data import DataSplits, describe
from supcon.io import atomic_write_text, write_json

COLUMNS = ("method", "SupCon loss", "train acc", "val acc", "time")


def results_table(runs: list[dict[str, Any]]) -> str:
    """The comparison as a Markdown table (one row per run)."""

    def num(value, digits=4):
        return "–" if value is None else f"{value:.{digits}f}"

    rows = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for run in runs:
        name = {"supcon": "SupCon + linear", "simclr": "SimCLR + linear", "ce": "cross-entropy"}[run["method"]]
        rows.append(f"| {name} | {num(run['supcon_loss'])} | {num(run['train_acc'])} | {num(run['val_acc'])} "
                    f"| {run['seconds']:.0f} s |")
    return "\n".join(rows)


def compare(cfg: Config, out: str | Path, data: DataSplits | None = None,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train the CE baseline and SupCon with the same encoder, epochs and augmentation; return the results."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg.save(out / "config.yaml")
    if data is None:
        data = train.load_data(cfg)
    log(describe(data))
    log("1/2 cross-entropy baseline")
    ce = train.train_ce(cfg, data, out / "ce")
    log("2/2 SupCon: stage 1 (contrastive) then stage 2 (linear probe)")
    sup = train.supcon(cfg, data, out / "supcon")
    runs = [sup.summary, ce.summary]
    results = {"dataset": data.name, "runs": runs, "skipped_images": len(data.skipped),
               "class_names": data.train.class_names}
    write_json(out / "results.json", results)
    train.write_skipped(out, data)
    table = results_table(runs)
    atomic_write_text(out / "results.md", table + "\n")
    if cfg.tsne:
        from supcon.evaluate.tsne import plot_embeddings, tsne_2d

        device = train.resolve_device(cfg.device)
        plain = sup.inputs.plain()
        panels = []
        for title, result in (("SupCon encoder", sup), ("cross-entropy encoder", ce)):
            feats = train.predict(result.encoder, data.val.images, plain, device, cfg.eval_batch_size)
            panels.append((f"{title} (val acc {result.summary['val_acc']:.3f})", tsne_2d(feats, cfg.seed)))
        plot_embeddings(panels, data.val.labels.numpy(), data.val.class_names, out / "tsne.png")
    return results
