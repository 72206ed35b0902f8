import json
import re
import shutil

import pytest

from supcon import train
from supcon.cli import main
from supcon.config import Config
from supcon.data import load_dataset
from supcon.report import config_changes, find_runs

QUICK = dict(dataset="digits", max_train=300, max_val=150, epochs=1, linear_epochs=3, batch_size=64, quiet=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """runs/sup (both stages), runs/more/ce, and runs/cmp: a comparison made of copies of the two."""
    root = tmp_path_factory.mktemp("runs")
    data = load_dataset("digits", max_train=300, max_val=150)
    sup = train.supcon(Config(**QUICK), data, root / "sup")
    ce = train.train_ce(Config(**QUICK, tsne=False, lr=3e-3), data, root / "more" / "ce")
    cmp = root / "cmp"
    shutil.copytree(root / "sup", cmp / "supcon")
    shutil.copytree(root / "more" / "ce", cmp / "ce")
    Config(**QUICK).save(cmp / "config.yaml")
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
    assert changes["epochs"] == (1, 30) and changes["lr"] == (3e-3, None) and changes["tsne"] == (False, True)
    assert "out" not in changes and "temperature" not in changes


def test_report_has_the_table_the_options_and_linked_pictures(runs, tmp_path, capsys):
    out = tmp_path / "docs" / "report.md"
    assert main(["report", str(runs), "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    text = out.read_text()
    assert "| run | method | stage-1 loss | kNN acc | train acc | val acc | time |" in text
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
