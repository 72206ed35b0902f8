"""The tables and pictures of a robustness report: ``robustness.md``, ``.json``, ``.csv``, the heat map of accuracy
per corruption and severity, reliability diagrams and margins."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from supcon.evaluate.calibration import plot_margins, plot_reliability
from supcon.io import atomic_write_text, save_figure, write_json
from supcon.methods import run_title
from supcon.reporting.format import num, pct

FILES = ("robustness.md", "robustness.json", "robustness.csv", "robustness.png", "reliability.png", "margins.png")


def eps_key(eps_255: float) -> str:
    """An attack radius (in 1/255) as the tables and ``robustness.json`` key it."""
    return f"{eps_255:g}"

def _label(run: dict[str, Any]) -> str:
    return f"{run['name']} ({run_title({'method': run['method']})})"


def summary_table(report: dict[str, Any]) -> str:
    """One row per run: clean and mean corrupted accuracy, mCE, the strongest attacks, ECE and median margin."""
    runs = report["runs"]
    eps = report["eps_255"] if report["attacks"] else []
    strongest = eps_key(max(eps)) if eps else None
    lines = ["| run | label noise | clean acc | corrupted acc | mCE (%) | relative mCE (%) | "
             + (f"FGSM {strongest}/255 | PGD {strongest}/255 | " if strongest else "")
             + "ECE | median margin |",
             "|---|---|---|---|---|---|" + ("---|---|" if strongest else "") + "---|---|"]
    for run in runs:
        noise = f"{run['label_noise']:.0%} {run['label_noise_mode']}" if run["label_noise"] else "–"
        adv = ""
        if strongest:
            adv = "".join(f"{num(run['adversarial'].get(a, {}).get(strongest), 4)} | " for a in ("fgsm", "pgd"))
        lines.append(f"| {_label(run)} | {noise} | {num(run['clean_acc'], 4)} | {num(run['corrupted_acc'], 4)} | "
                     f"{pct(run['mce'])} | {pct(run['relative_mce'])} | {adv}"
                     f"{num(run['calibration']['ece'], 4)} | "
                     f"{num(run['calibration']['margin_quantiles']['p50'], 3)} |")
    lost = [r["name"] for r in runs if not r["comparable_to_baseline"]]
    if lost:
        lines += ["", f"No corruption errors for {', '.join(lost)}: not evaluated on the baseline's images."]
    return "\n".join(lines)


def differences_table(report: dict[str, Any]) -> list[str]:
    """Per condition, SupCon minus CE for each measurement with its t-interval over the seed pairs, and which
    method it favours where the interval excludes zero."""
    lines = []
    for cond in report.get("differences", []):
        noise = f", {cond['label_noise']:.0%} {cond['label_noise_mode']} label noise" if cond["label_noise"] else ""
        seeds = cond["seeds"]
        lines += ["", f"### SupCon − CE on {cond['dataset']}{noise}: {len(seeds)} seed pair"
                  f"{'s' if len(seeds) > 1 else ''} ({', '.join(map(str, seeds))})", "",
                  "| measurement | more robust when | SupCon − CE | 95% CI | over | favours |",
                  "|---|---|---|---|---|---|"]
        for m in cond["metrics"]:
            ci = "–" if m["ci"] is None else f"[{m['ci'][0]:+.4f}, {m['ci'][1]:+.4f}]"
            favours = {"supcon": "SupCon", "ce": "CE"}.get(m["favours"], "neither" if m["ci"] else "–")
            over = "seeds and test images" if m.get("method", "").startswith("two-level") else "seeds"
            lines.append(f"| {m['label']} | {'higher' if m['higher_is_more_robust'] else 'lower'} | "
                         f"{m['difference']:+.4f} | {ci} | {over} | {favours} |")
    if lines:
        lines[0:0] = ["", "## SupCon − CE, paired by seed", "",
                      "Each seed's SupCon run minus the CE run of the same seed. Where the runs kept each test "
                      "image's result (the accuracies), the interval is compare's, over seeds and test images; "
                      "otherwise (the calibration error, the margin, a robustness.json written before) a t-interval "
                      "over the seed pairs. A measurement favours a method only where its interval excludes zero."]
    return lines


def markdown(report: dict[str, Any]) -> str:
    """The tables of ``robustness.md``."""
    runs, base, eps = report["runs"], report["baseline"], report["eps_255"]
    splits = ", ".join(sorted({"{}: {} images".format(r["dataset"], r.get("test_images", r.get("val_images")))
                               for r in runs}))
    lines = ["# Robustness", "",
             f"Baseline of the corruption errors: **{base}**. Accuracies are on each run's test split "
             f"({splits}), with clean labels; the corruptions' parameters and the definitions are in "
             "docs/robustness.md of the supcon repository.", "", summary_table(report), *differences_table(report)]
    if report["corruptions"]:
        lines += ["", "## Accuracy under each corruption (mean over severities) and corruption error CE (%)", "",
                  "| corruption | " + " | ".join(f"{r['name']} acc | {r['name']} CE" for r in runs) + " |",
                  "|---|" + "---|---|" * len(runs)]
        for c in report["corruptions"]:
            cells = []
            for r in runs:
                by = r["corruptions"][c]
                cells.append(f"{num(sum(by.values()) / len(by), 4)} | {pct((r['ce'] or {}).get(c))}")
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
        severities = report["severities"]
        lines += ["", "## Accuracy per corruption and severity", ""]
        for r in runs:
            lines += [f"**{_label(r)}** (clean {num(r['clean_acc'], 4)})", "",
                      "| corruption | " + " | ".join(f"s{s}" for s in severities) + " |",
                      "|---|" + "---|" * len(severities)]
            for c in report["corruptions"]:
                lines.append(f"| {c} | " + " | ".join(num(r["corruptions"][c][str(s)], 4) for s in severities)
                             + " |")
            lines.append("")
    if report["attacks"]:
        lines += ["## Adversarial accuracy (L-inf, eps in 1/255)", "",
                  f"FGSM: one signed-gradient step of eps. PGD: {report['pgd_steps']} steps of 2.5 eps / "
                  f"{report['pgd_steps']} from a random start in the eps-ball.", "",
                  "| run | " + " | ".join(f"{a.upper()} {eps_key(e)}" for a in report["attacks"] for e in eps)
                  + " |", "|---|" + "---|" * (len(report["attacks"]) * len(eps))]
        for r in runs:
            lines.append(f"| {r['name']} | " + " | ".join(num(r["adversarial"][a][eps_key(e)], 4)
                                                        for a in report["attacks"] for e in eps) + " |")
        lines.append("")
    lines += [f"## Margins and calibration ({report['bins']} confidence bins)", "",
              "| run | accuracy | ECE | NLL | mean confidence | margin p10 | p25 | median | p75 | p90 |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        c, q = r["calibration"], r["calibration"]["margin_quantiles"]
        lines.append(f"| {r['name']} | {num(c['accuracy'], 4)} | {num(c['ece'], 4)} | {num(c['nll'], 3)} | "
                     f"{num(c['mean_confidence'], 3)} | "
                     + " | ".join(num(q[k], 3) for k in ("p10", "p25", "p50", "p75", "p90")) + " |")
    if report["corruptions"]:
        lines += ["", "![accuracy per corruption and severity](robustness.png)"]
    lines += ["", "![reliability diagrams](reliability.png)", "", "![logit margins](margins.png)", ""]
    return "\n".join(lines)


def csv_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """``robustness.csv``: one value a row (run, method, metric, condition, level, value)."""
    rows = []
    for r in report["runs"]:
        def add(metric, condition, level, value, r=r):
            rows.append({"run": r["name"], "method": r["method"], "metric": metric, "condition": condition,
                         "level": level, "value": value})

        add("accuracy", "clean", 0, r["clean_acc"])
        for c, by in r["corruptions"].items():
            for s, a in by.items():
                add("accuracy", c, s, a)
        for attack, by in r["adversarial"].items():
            for e, a in by.items():
                add("accuracy", attack, e, a)
        for c, value in (r["ce"] or {}).items():
            add("ce", c, "", value)
        for c, value in (r["relative_ce"] or {}).items():
            add("relative_ce", c, "", value)
        add("mce", "all", "", r["mce"])
        add("relative_mce", "all", "", r["relative_mce"])
        for key in ("ece", "nll", "mean_confidence", "margin_mean"):
            add(key, "clean", "", r["calibration"][key])
        for key, value in r["calibration"]["margin_quantiles"].items():
            add(f"margin_{key}", "clean", "", value)
    return rows


def plot_heatmap(report: dict[str, Any], path: str | Path) -> Path | None:
    """Accuracy per corruption (rows) and severity (columns): one row of panels per run, its accuracy and,
    where it has one, its difference from the baseline; None without corruptions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    corruptions, severities = report["corruptions"], report["severities"]
    if not corruptions or not severities:
        return None
    runs = report["runs"]
    base = next(r for r in runs if r["name"] == report["baseline"])

    def grid(run):
        return [[run["corruptions"][c][str(s)] for s in severities] for c in corruptions]

    differences = [r is not base and r["comparable_to_baseline"] for r in runs]
    columns = 2 if any(differences) else 1
    width, height = 0.55 * len(severities) + 3.4, 0.36 * len(corruptions) + 1.2
    # One run per row keeps the picture readable at any number of runs; a single row grew too wide to read.
    fig, axes = plt.subplots(len(runs), columns, figsize=(width * columns, height * len(runs)), squeeze=False)
    for row, (run, has_difference) in enumerate(zip(runs, differences, strict=True)):
        panels = [(run["name"], grid(run), False)]
        if has_difference:
            panels.append((f"{run['name']} − {base['name']}",
                           [[a - b for a, b in zip(ra, rb, strict=True)]
                            for ra, rb in zip(grid(run), grid(base), strict=True)], True))
        for col in range(len(panels), columns):
            axes[row][col].axis("off")
        for ax, (title, values, difference) in zip(axes[row], panels, strict=False):
            if difference:
                reach = max(0.05, max(abs(v) for line in values for v in line))
                image = ax.imshow(values, cmap="RdBu", vmin=-reach, vmax=reach, aspect="auto")
            else:
                image = ax.imshow(values, cmap="viridis", vmin=0, vmax=1, aspect="auto")
            for i, line in enumerate(values):
                for j, v in enumerate(line):
                    ax.text(j, i, f"{v:+.2f}" if difference else f"{v:.2f}", ha="center", va="center", fontsize=7,
                            color="black" if difference or v > 0.5 else "white")
            ax.set_xticks(range(len(severities)), [str(s) for s in severities])
            ax.set_yticks(range(len(corruptions)), corruptions)
            ax.set_xlabel("severity")
            ax.set_title(title, fontsize=9)
            fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return save_figure(fig, path)


def write_robustness(report: dict[str, Any], margin_panels, out: Path) -> None:
    """Every file of the report into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "robustness.json", report)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["run", "method", "metric", "condition", "level", "value"],
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_rows(report))
    atomic_write_text(out / "robustness.csv", buffer.getvalue())
    atomic_write_text(out / "robustness.md", markdown(report))
    if plot_heatmap(report, out / "robustness.png") is None:
        (out / "robustness.png").unlink(missing_ok=True)  # an earlier report's picture would not match the tables
    plot_reliability([(r["name"], r["calibration"]) for r in report["runs"]], out / "reliability.png")
    plot_margins(margin_panels, out / "margins.png")
