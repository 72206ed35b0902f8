"""MkDocs hooks and a griffe extension for the documentation site (``mkdocs.yml`` names both).

- The README is the site's first page. It links into ``docs/`` (``docs/usage.md``, ``docs/images/...``) so that
  it reads well on GitHub; as the site's ``index.md`` it lives inside ``docs/``, so those links lose the prefix.
- Docstrings are written for the terminal (``>>>`` examples, Sphinx roles such as ``:func:`fit```): the
  examples become console code blocks (Markdown would read ``>>>`` as a quote), the roles plain code and a
  reST ``::`` before a literal block one colon.
"""

from __future__ import annotations

import re
from pathlib import Path

import griffe
from mkdocs.structure.files import File

README = Path(__file__).resolve().parents[1] / "README.md"
ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|exc):(?=<code>)")  # ":func:`fit`" renders as ":func:<code>"


def on_files(files, config):
    text = re.sub(r"\]\((<?)docs/", r"](\1", README.read_text())
    files.append(File.generated(config, "index.md", content=text))
    return files


def on_page_content(html, page, config, files):
    return ROLE.sub("", html).replace("::</p>", ":</p>")  # reST's "text::" before a literal block


def fence_doctests(text: str) -> str:
    """Each doctest (from a ``>>>`` line to the next blank or less indented line: the code and its output)
    wrapped in a ``pycon`` code block at its own indentation (an ``Example:`` section's is indented)."""
    out: list[str] = []
    indent = None
    for line in text.splitlines():
        if indent is None and line.lstrip().startswith(">>>"):
            indent = line[:len(line) - len(line.lstrip())]
            out.append(indent + "```pycon")
        elif indent is not None and (not line.strip() or not line.startswith(indent)):
            out.append(indent + "```")
            indent = None
        out.append(line)
    if indent is not None:
        out.append(indent + "```")
    return "\n".join(out)


class DoctestBlocks(griffe.Extension):
    """Docstrings' ``>>>`` examples as code blocks (see :func:`fence_doctests`)."""

    def on_object(self, *, obj, loader, **kwargs) -> None:
        if obj.docstring is not None and ">>>" in obj.docstring.value:
            obj.docstring.value = fence_doctests(obj.docstring.value)
