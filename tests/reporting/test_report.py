import base64
import io
import json
import re
import shutil
import sys

import numpy as np
import pytest
from browser import find_chromium, load_page
from conftest import QUICK
from threadpoolctl import threadpool_limits

from supcon.cli import main
from supcon.config import Config
from supcon.data import load_dataset
from supcon.reporting.markdown import config_changes
from supcon.runs import find_runs
from supcon.stages import train_run

PICTURED = {**QUICK, "epochs": 1, "linear_epochs": 3, "tsne": True}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """runs/sup (both stages), runs/more/ce, and runs/cmp: a comparison made of copies of the two."""
    root = tmp_path_factory.mktemp("runs")
    data = load_dataset("digits", max_train=300, max_val=150)
    sup = train_run("supcon", Config(**PICTURED), data, root / "sup")
    ce = train_run("ce", Config(**{**PICTURED, "tsne": False}, lr=3e-3), data, root / "more" / "ce")
    cmp = root / "cmp"
    shutil.copytree(root / "sup", cmp / "supcon")
    shutil.copytree(root / "more" / "ce", cmp / "ce")
    Config(**PICTURED).save(cmp / "config.yaml")
    (cmp / "results.json").write_text(json.dumps({"dataset": "digits", "runs": [sup.summary, ce.summary]}))
    shutil.copy(root / "sup" / "tsne.png", cmp / "tsne.png")
    return root


def test_runs_are_found_and_a_comparison_keeps_its_parts(runs):
    found = find_runs([runs])
    assert [r.path.relative_to(runs).as_posix() for r in found] == ["cmp", "more/ce", "sup"]
    assert [p.path.name for p in found[0].parts] == ["ce", "supcon"]
    assert [r.path for r in find_runs([runs / "sup", runs / "sup"])] == [runs / "sup"]


def test_config_changes_lists_only_what_differs_from_the_defaults(runs):
    changes = {k: (v, d) for k, v, d in config_changes(runs / "more" / "ce")}
    assert changes["epochs"] == (1, 30) and changes["lr"] == (3e-3, None)
    # options that do not change a result (where it was written, whether pictures were drawn) are not settings
    assert "out" not in changes and "tsne" not in changes and "temperature" not in changes


def test_report_has_the_table_the_options_and_linked_pictures(runs, tmp_path, capsys):
    out = tmp_path / "docs" / "report.md"
    assert main(["report", str(runs), "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    text = out.read_text()
    assert "| run | method | test acc | val acc | stage-1 loss | kNN acc | train acc | optimizer steps | time |" in text
    rows = [line for line in text.splitlines() if line.startswith("| ../")]
    names = [row.split(" | ")[0].rsplit("/", 2)[-2:] for row in rows]
    assert names == [["cmp", "supcon"], ["cmp", "ce"], ["more", "ce"], [runs.name, "sup"]]
    assert "| SupCon + linear |" in rows[0] and "| cross-entropy |" in rows[1]
    assert "| epochs | `1` | `30` |" in text and "| lr | `0.003` | – |" in text
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert links and all((out.parent / link).is_file() for link in links), links
    names = {link.rsplit("/", 2)[-2] + "/" + link.rsplit("/", 1)[-1] for link in links}
    assert {"sup/curves.png", "sup/tsne.png", "cmp/tsne.png", "supcon/curves.png", "ce/curves.png"} <= names


def test_report_of_a_directory_without_runs_is_a_one_line_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a run directory (no results.json)" in err[0]


# ---------------------------------------------------------------------------------------------- the HTML page

MAP_POINTS = 100  # of the 150 validation images: a subset, the same one in every run (same seed and labels)


@pytest.fixture(scope="module")
def page(runs, tmp_path_factory):
    """The HTML report of the three runs (four encoders), t-SNE maps only so that the time does not depend on
    whether umap-learn is installed."""
    pytest.importorskip("plotly", reason="the HTML report needs plotly (pip install 'supcon[report]')")
    out = tmp_path_factory.mktemp("html") / "report.html"
    # sklearn's t-SNE shares torch's OpenMP pool (two threads here), and a two-thread t-SNE stalls at each of its
    # thousand steps whenever another job holds a core: one thread keeps the time steady on a shared machine
    with pytest.MonkeyPatch.context() as mp, threadpool_limits(1, user_api="openmp"):
        mp.setattr("supcon.evaluate.tsne.umap_available", lambda: False)
        mp.chdir(out.parent)
        assert main(["report", str(runs), "--html", str(out), "--map-points", str(MAP_POINTS)]) == 0
    assert not (out.parent / "report.md").exists()  # --html alone writes the page only
    return out


def _thumbnails(text: str) -> list[str]:
    return json.loads(re.search(r'<script type="application/json" id="supcon-thumbnails">(.*?)</script>', text,
                                re.DOTALL).group(1))


def test_html_report_holds_the_tables_plotly_and_each_image_once(page, runs):
    from PIL import Image

    text = page.read_text()
    assert "plotly.js v" in text and "<script src" not in text  # the library inline, nothing fetched
    rows = re.findall(r"<tr><td>\.\./[^<]*?([^/<]+/[^/<]+)</td><td>([^<]*)</td>", text)
    assert rows == [("cmp/supcon", "SupCon + linear"), ("cmp/ce", "cross-entropy"), ("more/ce", "cross-entropy"),
                    (f"{runs.name}/sup", "SupCon + linear")]
    assert "<tr><td>epochs</td><td>1</td><td>30</td></tr>" in text
    assert text.count('<div class="embedding-map">') == 3 and text.count("supconThumbnails('") == 3
    # four encoders map the same 100 validation images: each thumbnail is stored once, an 8x8 digit
    thumbs = _thumbnails(text)
    assert len(thumbs) == MAP_POINTS == len(set(thumbs))
    picture = Image.open(io.BytesIO(base64.b64decode(thumbs[0].split(",", 1)[1])))
    assert thumbs[0].startswith("data:image/png;base64,") and picture.size == (8, 8) and picture.mode == "L"
    # curves of every part: cmp's two, more/ce's and sup's (pretrain and linear stages in one figure)
    assert text.count("pretrain: loss") == 2 and text.count("ce: loss") == 2 and "linear: accuracy" in text


def test_embedding_figure_points_carry_their_thumbnail_and_the_classifiers_prediction(runs, tmp_path):
    pytest.importorskip("plotly", reason="the HTML report needs plotly (pip install 'supcon[report]')")
    from supcon.reporting.html import Thumbnails, embedding_figure, thumbnail_uri
    from supcon.runs.load import val_embeddings

    emb = val_embeddings(runs / "sup", max_points=1000)  # all 150 validation images
    names = emb.class_names
    assert len(emb.labels) == 150 and emb.features.shape == (150, 128)
    # the linear classifier read back predicts what it predicted when the run measured its val acc
    assert (emb.predicted == emb.labels).mean() == pytest.approx(json.loads(
        (runs / "sup" / "results.json").read_text())["runs"][0]["val_acc"], abs=1e-6)
    thumbs = Thumbnails()
    with threadpool_limits(1, user_api="openmp"):  # as in the page fixture
        fig = embedding_figure([("SupCon", emb)], thumbs, umap=False)
    seen = []
    for trace in fig.data:
        assert trace.legendgroup == trace.name and trace.showlegend == (trace.marker.symbol == "circle")
        for thumb, guess in trace.customdata:
            seen.append((trace.name, guess, trace.marker.symbol, thumbs.uris[thumb]))
    assert len(seen) == 150
    expected = {(names[t], names[p], "x" if p != t else "circle", thumbnail_uri(image.numpy()))
                for t, p, image in zip(emb.labels, emb.predicted, emb.images, strict=True)}
    assert sorted(seen) == sorted(expected)
    assert any(symbol == "x" for _, _, symbol, _ in seen)  # one epoch leaves mistakes to mark
    # a run before stage 2 has no classifier: its points say so
    stage1 = tmp_path / "stage1"
    shutil.copytree(runs / "sup", stage1)
    (stage1 / "linear.safetensors").unlink()
    emb = val_embeddings(stage1, max_points=10)
    assert emb.predicted is None
    with threadpool_limits(1, user_api="openmp"):
        fig = embedding_figure([("stage 1", emb)], Thumbnails(), umap=False)
    assert {g for trace in fig.data for _, g in trace.customdata} == {"– (no linear classifier)"}


def test_html_report_notes_a_run_whose_map_cannot_be_made_and_goes_on(runs, tmp_path, capsys):
    pytest.importorskip("plotly", reason="the HTML report needs plotly (pip install 'supcon[report]')")
    moved = tmp_path / "moved"
    shutil.copytree(runs / "more" / "ce", moved)
    config = (moved / "config.yaml").read_text().replace("dataset: digits", "dataset: npz:/nowhere/gone.npz")
    (moved / "config.yaml").write_text(config)
    out = tmp_path / "report.html"
    assert main(["report", str(moved), "--html", str(out), "--map-points", "20"]) == 0
    err = capsys.readouterr().err
    assert "supcon: warning: no embedding map of" in err and "gone.npz" in err
    text = out.read_text()
    assert '<p class="note">No embedding map:' in text and "gone.npz" in text and "ce: loss" in text
    assert main(["report", str(moved), "--html", str(out), "--map-points", "3"]) == 2
    assert "max_points must be 0 (no embedding maps) or at least 5; got 3" in capsys.readouterr().err
    # --out as well: both files; --map-points 0: no maps, and no warning since no encoder runs
    markdown = tmp_path / "report.md"
    assert main(["report", str(moved), "--html", str(out), "--out", str(markdown), "--map-points", "0"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert "Embedding map" not in out.read_text() and "ce: loss" in out.read_text()
    assert "| cross-entropy |" in markdown.read_text()


def test_umap_is_asked_for_by_its_distribution_and_missing_it_is_an_import_error_naming_it(monkeypatch):
    import importlib.metadata

    from supcon.evaluate import tsne

    def version(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    assert not tsne.umap_available()
    with pytest.raises(ImportError, match=r"UMAP needs umap-learn: pip install umap-learn"):
        tsne.umap_2d(np.zeros((10, 4)))


def test_html_report_without_plotly_is_a_one_line_error_naming_the_extra(runs, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "plotly", None)  # import plotly now raises ImportError
    assert main(["report", str(runs / "sup"), "--html", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["supcon report: error: the HTML report needs plotly: pip install 'supcon[report]'"]
    assert not (tmp_path / "r.html").exists()


@pytest.mark.slow
def test_html_report_adds_umap_maps_where_umap_learn_is_installed(runs):
    pytest.importorskip("plotly", reason="the HTML report needs plotly (pip install 'supcon[report]')")
    from supcon.evaluate.tsne import umap_available
    from supcon.reporting.html import Thumbnails, embedding_figure

    if not umap_available():
        pytest.skip("UMAP maps need umap-learn (pip install umap-learn), which no extra installs")
    from supcon.runs.load import val_embeddings

    emb = val_embeddings(runs / "sup", max_points=60)
    with threadpool_limits(1, user_api="openmp"):
        fig = embedding_figure([("SupCon", emb), ("again", emb)], Thumbnails())
    titles = [a.text for a in fig.layout.annotations]
    assert titles == ["t-SNE: SupCon", "t-SNE: again", "UMAP: SupCon", "UMAP: again"]
    umap_traces = [t for t in fig.data if t.xaxis in ("x3", "x4")]
    assert sum(len(t.x) for t in umap_traces) == 120


# ---------------------------------------------------------------------------------------------- in a browser

needs_chromium = pytest.mark.skipif(find_chromium() is None, reason="no chromium on PATH (Debian: apt-get install "
                                    "chromium; .ci/run installs it where apt-get works)")
TAB10 = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
         (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def _class_coloured_pixels(png) -> int:
    from PIL import Image

    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    near = [(np.abs(rgb - np.array(c)).sum(-1) < 40) for c in TAB10]
    return int(np.logical_or.reduce(near).sum())


@needs_chromium
def test_the_browser_check_catches_console_errors_and_network_requests(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text('<html><head></head><body><p>x</p><img src="http://example.com/a.png">'
                   '<script>console.error("broken"); undefinedFunction();</script></body></html>')
    result = load_page(bad, probe=False)
    assert any("broken" in e for e in result.errors), result.console
    assert any("undefinedFunction is not defined" in e for e in result.errors), result.console
    assert any("refused: http://example.com/a.png" in e for e in result.errors), result.console


@needs_chromium
def test_html_report_opens_offline_in_chromium_with_no_errors_and_shows_the_maps(page, tmp_path):
    shot = tmp_path / "report.png"
    result = load_page(page, shot, hover=True, size=(1400, 1100))
    assert result.errors == [], result.errors
    # every map point drawn: 4 encoders x 100 points
    assert result.tagged("SUPCON-POINTS") == [str(4 * MAP_POINTS)]
    (hover,) = result.tagged("SUPCON-HOVER")
    shown, caption, src = hover.split(" | ")
    assert shown == "block" and re.fullmatch(r"true: \d, predicted: \d", caption), hover
    assert src in _thumbnails(page.read_text())
    # the screenshot shows the first map's points in the class colours (a blank or broken page has none)
    assert _class_coloured_pixels(shot) > 2000
