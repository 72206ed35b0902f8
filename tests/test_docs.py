"""The documentation: docstrings of the API reference, the MkDocs site built strictly, the tutorial notebook run."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
API = ("supcon.losses", "supcon.models", "supcon.augment", "supcon.data", "supcon.evaluate.inference",
       "supcon.engine.loop", "supcon.runs", "supcon.runs.load", "supcon.stages", "supcon.experiments.compare")


def _public(module) -> list[tuple[str, object]]:
    """What the reference shows of a module: ``__all__``, else its own public functions and classes."""
    names = getattr(module, "__all__", None)
    if names is None:
        names = [name for name, obj in vars(module).items() if not name.startswith("_")
                 and (inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__module__ == module.__name__]
    return [(name, getattr(module, name)) for name in names]


def _documented(obj, name: str) -> bool:
    doc = obj.__doc__
    # a dataclass without a docstring gets its signature as one
    return bool(doc and doc.strip()) and not (inspect.isclass(obj) and doc.startswith(f"{name}("))


def _overrides_documented(cls, name: str) -> bool:
    """A method that overrides a documented one (``forward``, ``state_dict``) means what the base's says."""
    return any(_documented(getattr(base, name), name) for base in cls.__mro__[1:] if name in vars(base))


def test_every_public_function_class_and_method_in_the_api_reference_has_a_docstring():
    missing = []
    for module_name in API:
        module = importlib.import_module(module_name)
        public = _public(module)
        assert public, module_name
        for name, obj in public:
            if not _documented(obj, name):
                missing.append(f"{module_name}.{name}")
            if not inspect.isclass(obj):
                continue
            for attr, member in vars(obj).items():
                function = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
                if attr.startswith("_") or not inspect.isfunction(function):
                    continue
                if not _documented(function, attr) and not _overrides_documented(obj, attr):
                    missing.append(f"{module_name}.{name}.{attr}")
    assert missing == [], f"no docstring: {', '.join(missing)}"


def _require(*modules: str) -> None:
    for module in modules:
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (pip install -e '.[docs]')")


def test_the_documentation_site_builds_strictly_with_the_readme_and_the_api_reference(tmp_path):
    _require("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-3000:]  # strict: a broken link or anchor is an error
    index = (site / "index.html").read_text()
    # the quick start is the README, its docs/ links made relative to the site
    assert "What <code>supcon compare</code> does" in index and 'src="images/tsne-digits.png"' in index
    assert (site / "images" / "tsne-digits.png").is_file() and (site / "tutorial.ipynb").is_file()
    losses = (site / "api" / "losses" / "index.html").read_text()
    assert 'id="supcon.losses.SupConLoss"' in losses and "base_temperature" in losses
    for page in ("losses", "models", "augment", "data", "evaluate", "engine", "runs", "stages", "experiments"):
        html = (site / "api" / page / "index.html").read_text()
        assert 'class="doc doc-object' in html, page
        # doctests are code, Sphinx roles plain code: no quoted ">>>" and no ":func:" left
        assert "<blockquote>" not in html and not re.search(r":(func|class|meth|mod):", html), page
    assert 'id="supcon.data.load_dataset"' in (site / "api" / "data" / "index.html").read_text()
    assert 'id="supcon.stages.train_run"' in (site / "api" / "stages" / "index.html").read_text()


def test_the_tutorial_notebook_trains_pictures_and_predicts(tmp_path):
    _require("nbclient", "nbformat", "ipykernel")
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(ROOT / "docs" / "tutorial.ipynb", as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code)  # stored without outputs
    assert "supcon compare" not in "".join(cell.source for cell in code)  # the library, not the command
    # a cell may wait for the CPU on a loaded machine: a generous limit, not a measurement
    NotebookClient(notebook, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "".join(out.get("text", "") for cell in code for out in cell.outputs if out.output_type == "stream")
    pictures = [out for cell in code for out in cell.outputs if "image/png" in out.get("data", {})]
    assert len(pictures) == 2  # the t-SNE and the predicted images
    assert "digits: 1257 train / 270 val / 270 test" in text
    probe, ce = (float(v) for v in re.findall(r"test acc (\d\.\d+)", text)[:2])
    assert probe > 0.85 and ce > 0.85, text
    # predicting the whole test split with the trained model gives the probe's own test accuracy
    measured, predicted = re.search(r"test images: (\d\.\d+) predicted right \(the probe measured (\d\.\d+)\)",
                                    text).groups()
    assert measured == predicted == f"{probe:.3f}"
