"""``report --html``: run directories on one self-contained page that opens from disk with no network: the results,
the options each run changed, interactive training curves and, for each run, its validation images' embeddings
mapped to 2-D (t-SNE, and UMAP with ``umap-learn``; a comparison's SupCon and CE side by side) whose points show
their image, true and predicted class on hover. Needs plotly (``pip install 'supcon[report]'``).

>>> from supcon.reporting.html import write_html_report
>>> write_html_report(["runs/"], "report.html")
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from supcon.config import MAP_POINTS
from supcon.evaluate.curves import ACCURACIES, curve_panels, read_metrics
from supcon.evaluate.tsne import MIN_POINTS, tsne_2d, umap_2d, umap_available
from supcon.io import atomic_write_text
from supcon.methods import encoder_title
from supcon.reporting.format import answer_lines, comparison_rows, results_rows
from supcon.reporting.markdown import commands_of, config_changes, facts_sentence, run_link, table_entries
from supcon.runs import FoundRun, find_runs
from supcon.runs.load import ValEmbeddings, val_embeddings

THUMBNAIL_PX = 64  # larger images are shrunk to this for the hover box
# Plotly's hover labels hold text only (no <img>), so a hovered point's image is shown in a box beside the
# cursor by this handler, registered on each map through plotly's post_script (which may run before the rest of
# the page is parsed: elements are looked up on hover); customdata[0] of each point indexes the thumbnails,
# stored once in #supcon-thumbnails, and customdata[1] is the predicted class.
HOVER_SCRIPT = """
function supconThumbnails(plotId) {
  var plot = document.getElementById(plotId), thumbs = null;
  plot.on("plotly_hover", function (ev) {
    var box = document.getElementById("supcon-thumb"), point = ev.points[0], e = ev.event || {};
    thumbs = thumbs || JSON.parse(document.getElementById("supcon-thumbnails").textContent);
    box.querySelector("img").src = thumbs[point.customdata[0]];
    box.querySelector("span").textContent = "true: " + point.data.name + ", predicted: " + point.customdata[1];
    box.style.display = "block";
    // left of the cursor, since plotly's own label opens to its right; vertically centred, kept on screen
    var x = (e.clientX || 0) - box.offsetWidth - 16, y = (e.clientY || 0) - box.offsetHeight / 2;
    box.style.left = (x < 0 ? (e.clientX || 0) + 160 : x) + "px";
    box.style.top = Math.max(0, Math.min(y, window.innerHeight - box.offsetHeight)) + "px";
  });
  plot.on("plotly_unhover", function () { document.getElementById("supcon-thumb").style.display = "none"; });
}
"""
STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f3f3f3; }
code { background: #f5f5f5; padding: 0 0.2em; }
.note { color: #555; }
#supcon-thumb { position: fixed; display: none; pointer-events: none; z-index: 10; background: #fff;
                border: 1px solid #888; padding: 4px; font-size: 12px; max-width: 180px; }
#supcon-thumb img { display: block; width: 128px; height: 128px; object-fit: contain;
                    image-rendering: pixelated; margin-bottom: 2px; }
"""


def _plotly():
    try:
        import plotly
    except ImportError:
        raise ImportError("the HTML report needs plotly: pip install 'supcon[report]'") from None
    return plotly


def _html_table(columns: Iterable[str], rows: Iterable[Iterable[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def thumbnail_uri(image: Any, size: int = THUMBNAIL_PX) -> str:
    """A uint8 ``[C, H, W]`` image as a ``data:`` URI: PNG up to 32 px (sharp when enlarged), JPEG above,
    shrunk to ``size`` px on its longer side."""
    from PIL import Image

    array = np.asarray(image, dtype=np.uint8)
    picture = Image.fromarray(array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0))
    picture.thumbnail((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    small = max(picture.size) <= 32
    picture.save(buffer, format="PNG" if small else "JPEG", quality=85)
    return f"data:image/{'png' if small else 'jpeg'};base64,{base64.b64encode(buffer.getvalue()).decode()}"


class Thumbnails:
    """The page's thumbnails, each image stored once however many maps show it (a comparison's two methods)."""

    def __init__(self) -> None:
        self.uris: list[str] = []
        self._index: dict[bytes, int] = {}

    def add(self, image: Any) -> int:
        array = np.ascontiguousarray(np.asarray(image, dtype=np.uint8))
        key = hashlib.sha1(array.tobytes() + str(array.shape).encode()).digest()
        if key not in self._index:
            self._index[key] = len(self.uris)
            self.uris.append(thumbnail_uri(array))
        return self._index[key]


def _colours(n: int) -> list[str]:
    """The class colours of ``tsne.png``, so that the page and the pictures read alike."""
    import matplotlib
    from matplotlib.colors import to_hex

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [to_hex(cmap(c % cmap.N)) for c in range(n)]


def _method_title(results: dict[str, Any]) -> str:
    run = results["runs"][0]
    accuracy = f" (val acc {run['val_acc']:.3f})" if run.get("val_acc") is not None else ""
    return encoder_title(run) + accuracy


def _parts_in_order(run: FoundRun) -> list[FoundRun]:
    """The runs a section shows (maps, curves): a comparison's parts (of its first seed), SupCon before CE, else the
    run itself."""
    if not run.parts:
        return [run]
    seeds = run.run.seed_dirs()
    first = seeds[0] if seeds else run.path
    parts = [part for part in run.parts if part.path.parent == first]
    return sorted(parts, key=lambda part: (part.results.get("runs", [{}])[0].get("method") == "ce", part.path))


def embedding_figure(panels: list[tuple[str, ValEmbeddings]], thumbnails: Thumbnails, umap: bool | None = None):
    """A Plotly figure: one column per ``(title, ValEmbeddings)`` panel, t-SNE above and UMAP below (with
    ``umap-learn``, or as ``umap`` says). Points are coloured by their true class (one legend entry toggles it in
    every panel), crosses mark the images the run's classifier gets wrong, and each point's ``customdata`` holds
    its thumbnail's index in ``thumbnails`` and its predicted class."""
    from plotly.subplots import make_subplots

    projections = [("t-SNE", tsne_2d)] + ([("UMAP", umap_2d)] if (umap_available() if umap is None else umap)
                                          else [])
    names = panels[0][1].class_names
    colours = _colours(len(names))
    fig = make_subplots(rows=len(projections), cols=len(panels), horizontal_spacing=0.04, vertical_spacing=0.08,
                        subplot_titles=[f"{method}: {title}" for method, _ in projections for title, _ in panels])
    for row, (_, project) in enumerate(projections, 1):
        for col, (_, emb) in enumerate(panels, 1):
            xy = project(emb.features, emb.seed)
            index = np.array([thumbnails.add(image) for image in emb.images.numpy()])
            predicted = emb.predicted if emb.predicted is not None else np.full(len(emb.labels), -1)
            for c, name in enumerate(names):
                # right and wrong predictions as two traces of one legend entry, so that its symbol is a circle
                for wrong in (False, True):
                    sel = (emb.labels == c) & ((predicted != c) & (predicted >= 0) if wrong
                                               else (predicted == c) | (predicted < 0))
                    guess = [emb.class_names[p] if p >= 0 else "– (no linear classifier)" for p in predicted[sel]]
                    fig.add_scatter(
                        x=xy[sel, 0], y=xy[sel, 1], mode="markers", name=name, legendgroup=name,
                        showlegend=row == 1 and col == 1 and not wrong,
                        marker=dict(color=colours[c], size=8 if wrong else 7, opacity=0.85,
                                    symbol="x" if wrong else "circle"),
                        customdata=[[int(i), g] for i, g in zip(index[sel], guess, strict=True)],
                        hovertemplate=f"true: <b>{html.escape(name)}</b><br>predicted: %{{customdata[1]}}"
                                      "<extra></extra>", row=row, col=col)
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_layout(height=480 * len(projections), margin=dict(l=20, r=20, t=40, b=20), template="plotly_white",
                      legend=dict(itemsizing="constant"), hoverlabel=dict(bgcolor="white"))
    return fig


def curves_figure(run_dir: str | Path):
    """The training curves of ``curves.png`` as a Plotly figure (loss, and accuracies where there are any, for
    each stage); None for a run without ``metrics.jsonl``."""
    from plotly.subplots import make_subplots

    panels = curve_panels(read_metrics(run_dir))
    if not panels:
        return None
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[f"{s}: {k}" for s, k, _ in panels])
    colours = {"loss": "#d62728", "train": "#1f77b4", "val": "#ff7f0e", "kNN (val)": "#2ca02c"}
    for col, (_, kind, rows) in enumerate(panels, 1):
        series = [("loss", "loss")] if kind == "loss" else ACCURACIES
        for key, label in series:
            points = [(row["epoch"], row[key]) for row in rows if row.get(key) is not None]
            if points:
                fig.add_scatter(x=[e for e, _ in points], y=[v for _, v in points], mode="lines+markers",
                                name=label, legendgroup=label, line=dict(color=colours[label]),
                                showlegend=not any(t.legendgroup == label for t in fig.data), row=1, col=col)
        fig.update_xaxes(title_text="epoch", row=1, col=col)
        if kind == "accuracy":
            fig.update_yaxes(range=[0, 1.02], row=1, col=col)
    fig.update_layout(height=320, margin=dict(l=40, r=20, t=40, b=40), template="plotly_white")
    return fig


def _figure_html(fig, thumbnails: bool = False) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False},
                       post_script="supconThumbnails('{plot_id}');" if thumbnails else None)


def _embedding_html(run: FoundRun, thumbnails: Thumbnails, max_points: int, cache: dict, log) -> str:
    panels = _parts_in_order(run)
    try:
        embeddings = [(_method_title(p.results), val_embeddings(p.path, max_points, cache=cache)) for p in panels]
        log(f"embedding map of {run.path}: {', '.join(title for title, _ in embeddings)}")
        fig = embedding_figure(embeddings, thumbnails)
    except (ValueError, OSError, ImportError) as err:
        warnings.warn(f"no embedding map of {run.path}: {str(err).splitlines()[0]}", stacklevel=2)
        return f'<p class="note">No embedding map: {html.escape(str(err).splitlines()[0])}</p>'
    n = len(embeddings[0][1].labels)
    return (f'<p class="note">{n:,} validation images (a class-balanced subset of at most {max_points:,}), each '
            "run's encoder embeddings mapped to 2-D; hover a point for its image, true and predicted class. "
            "Circles: predicted right; crosses: predicted wrong; click a class in the legend to hide it.</p>"
            + f'<div class="embedding-map">{_figure_html(fig, thumbnails=True)}</div>')


def _html_section(run: FoundRun, number: int, base: Path, thumbnails: Thumbnails, max_points: int, cache: dict, log
                  ) -> list[str]:
    results = run.results
    code = lambda text: f"<code>{html.escape(str(text))}</code>"  # noqa: E731
    parts = [f"<section><h2>{html.escape(run_link(run.path, base))}</h2>", f"<p>{facts_sentence(results, code)}</p>"]
    if "methods" in results:  # a comparison: its methods over the seeds, on test, and the verdict
        parts += [_html_table(*comparison_rows(results))]
        parts += [f"<p><strong>{html.escape(line)}</strong></p>" for line in answer_lines(results)]
    changes = config_changes(run.path, commands_of(run.run))
    if changes:
        parts.append(_html_table(("option", "value", "default"), [(k, "–" if v is None else v, d)
                                                                   for k, v, d in changes]))
    else:
        parts.append("<p>Every option at its default.</p>" if (run.path / "config.yaml").is_file()
                     else "<p>No config.yaml.</p>")
    if max_points:
        parts += [f'<h3 id="map-{number}">Embedding map</h3>', _embedding_html(run, thumbnails, max_points, cache, log)]
    curves = [(p, curves_figure(p.path)) for p in _parts_in_order(run)]
    if any(fig is not None for _, fig in curves):
        parts.append("<h3>Training curves</h3>")
        for part, fig in curves:
            if fig is not None:
                parts += [f"<h4>{html.escape(part.path.name)}/</h4>" if run.parts else "", _figure_html(fig)]
    return parts + ["</section>"]


def write_html_report(dirs: Iterable[str | Path], out: str | Path = "report.html", max_points: int = MAP_POINTS,
                      log=None) -> Path:
    """Write one self-contained HTML page of the runs in ``dirs``: the results table, each run's changed
    options and training curves, and an interactive 2-D map of its validation embeddings (t-SNE, and UMAP with
    ``umap-learn``; a comparison's SupCon and CE side by side) whose points show their image, true and predicted
    class on hover. Plotly's JavaScript and the thumbnails are inside the page: it opens from disk, offline.

    ``max_points`` caps the points of each map (0: no maps, no encoder is run); ``log`` gets a line per map.
    """
    if max_points != 0 and max_points < MIN_POINTS:
        raise ValueError(f"max_points must be 0 (no embedding maps) or at least {MIN_POINTS}; got {max_points}")
    plotly = _plotly()
    out = Path(out)
    runs = find_runs(dirs)
    base = out.resolve().parent
    entries, names = table_entries(runs, base)
    thumbnails, cache = Thumbnails(), {}
    sections = []
    for number, run in enumerate(runs, 1):
        sections += _html_section(run, number, base, thumbnails, max_points, cache, log or (lambda line: None))
    columns, rows = results_rows(entries, names)
    count = f"{len(runs)} run director{'y' if len(runs) == 1 else 'ies'}, written {time.strftime('%Y-%m-%d %H:%M')}"
    # "</" cannot end the JSON's <script> element early: base64 and class-free data hold no "<"
    thumbs = json.dumps(thumbnails.uris).replace("</", "<\\/")
    page = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', "<title>supcon report</title>",
        f"<style>{STYLE}</style>", f'<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script>',
        f"<script>{HOVER_SCRIPT}</script>", "</head><body>", "<h1>supcon report</h1>",
        f"<p>{html.escape(count)}. Options are listed where they differ from the defaults.</p>",
        "<h2>Results</h2>", _html_table(columns, rows), *sections,
        '<div id="supcon-thumb"><img alt=""><span></span></div>',
        f'<script type="application/json" id="supcon-thumbnails">{thumbs}</script>', "</body></html>"]
    atomic_write_text(out, "\n".join(page) + "\n")
    return out
