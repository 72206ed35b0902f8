"""Headless Chromium for the HTML report's tests and the documentation's screenshot of it.

A page is loaded from disk with no network (a dead proxy for every request, and a Content-Security-Policy that
allows only what the page holds), its console messages are collected from Chromium's log and a screenshot is
taken. Chromium logs every console message at one level, so a small script put in front of the page's own marks
errors in the text: console.error, uncaught exceptions, failed loads and refused requests.

    python tests/browser.py report.html docs/images/report-digits.png --hover --size 1400x1500 --colors 128
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ERROR = "SUPCON-ERROR"  # what the console hook puts in front of an error
OFFLINE = ("<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
           "script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; font-src data:\">")
CONSOLE_HOOK = """<script>
(function () {
  function mark(text) { console.log("SUPCON-ERROR " + text); }
  console.error = function () { mark(Array.prototype.join.call(arguments, " ")); };
  window.addEventListener("error", function (e) {
    mark(e.message || ("failed to load " + (e.target && (e.target.src || e.target.href))));
  }, true);
  window.addEventListener("unhandledrejection", function (e) { mark("unhandled rejection: " + e.reason); });
  document.addEventListener("securitypolicyviolation", function (e) { mark("refused: " + e.blockedURI); });
})();
</script>"""
# After loading: the number of points drawn in the embedding maps and, with hover, a real mouse move onto the first
# map's first point (plotly emits plotly_hover only for events with a target) and what the thumbnail box shows.
REPORT_PROBE = """<script>
window.addEventListener("load", function () {
  setTimeout(function () {
    console.log("SUPCON-POINTS " + document.querySelectorAll(".embedding-map .scatterlayer .point").length);
    if (!WANT_HOVER) return;
    var map = document.querySelector(".embedding-map .plotly-graph-div");
    var point = map.querySelector(".scatterlayer .point").getBoundingClientRect();
    map.querySelector(".nsewdrag").dispatchEvent(new MouseEvent("mousemove", {
      clientX: point.left + point.width / 2, clientY: point.top + point.height / 2, bubbles: true}));
    setTimeout(function () {
      var box = document.getElementById("supcon-thumb");
      console.log("SUPCON-HOVER " + box.style.display + " | " + box.querySelector("span").textContent + " | "
                  + box.querySelector("img").src);
    }, 300);
  }, 300);
});
</script>"""
CONSOLE_LINE = re.compile(r':CONSOLE[:(][^\]]*\] "(.*?)", source: ', re.DOTALL)


def find_chromium() -> str | None:
    """The Chromium (or Chrome) executable on PATH, if any."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@dataclass
class PageLoad:
    console: list[str]  # every console message, in order
    errors: list[str] = field(default_factory=list)  # those that are errors

    def tagged(self, tag: str) -> list[str]:
        return [m[len(tag) + 1:] for m in self.console if m.startswith(tag + " ")]


def load_page(page: Path, screenshot: Path | None = None, *, probe: bool = True, hover: bool = False,
              size: tuple[int, int] = (1400, 1000), timeout: float = 600) -> PageLoad:
    """Load ``page`` (a copy, with the console hook and the offline policy in front and, with ``probe``, the
    report probe at the end) in headless Chromium from file:// with no network; screenshot to ``screenshot``."""
    chromium = find_chromium()
    if chromium is None:
        raise RuntimeError("no chromium on PATH")
    text = Path(page).read_text()
    # in front of everything but the charset, which must come within the page's first 1,024 bytes
    charset = re.search(r"<meta charset=[^>]*>", text)
    head = charset.end() if charset else text.index("<head>") + len("<head>") if "<head>" in text else 0
    text = text[:head] + OFFLINE + CONSOLE_HOOK + text[head:]
    if probe:
        text = text.replace("</body>", REPORT_PROBE.replace("WANT_HOVER", "true" if hover else "false") + "</body>")
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "page.html"
        copy.write_text(text)
        command = [chromium, "--headless", "--disable-gpu", "--no-sandbox", "--disable-dev-shm-usage",
                   "--no-first-run", "--disable-extensions", "--enable-logging=stderr", "--v=0",
                   f"--user-data-dir={tmp}/profile",
                   "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
                   f"--window-size={size[0]},{size[1]}", "--virtual-time-budget=10000", "--hide-scrollbars"]
        if screenshot is not None:
            command.append(f"--screenshot={Path(screenshot).resolve()}")
        command.append(copy.as_uri())
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    console = CONSOLE_LINE.findall(done.stderr)
    errors = [m for m in console if m.startswith(ERROR) or m.startswith("Uncaught")]
    if screenshot is not None and not Path(screenshot).is_file():
        raise RuntimeError(f"chromium wrote no screenshot (exit {done.returncode}): {done.stderr[-2000:]}")
    return PageLoad(console, errors)


def main() -> int:
    parser = argparse.ArgumentParser(description="Screenshot an HTML report in headless Chromium, offline.")
    parser.add_argument("page", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--hover", action="store_true", help="hover the first map's first point")
    parser.add_argument("--size", default="1400x1000", help="window size (default: 1400x1000)")
    parser.add_argument("--colors", type=int, help="reduce the PNG to this many colours (a smaller file)")
    args = parser.parse_args()
    width, height = map(int, args.size.split("x"))
    result = load_page(args.page, args.png, hover=args.hover, size=(width, height))
    if args.colors:
        from PIL import Image

        picture = Image.open(args.png).convert("RGB")
        picture.quantize(colors=args.colors, method=Image.Quantize.MEDIANCUT).save(args.png, optimize=True)
    for message in result.console:
        print(message[:200])
    return 1 if result.errors else 0


if __name__ == "__main__":
    sys.exit(main())
