"""Opens a run report in headless Chromium, takes a screenshot and checks that every image rendered.

Usage:
    python recipes/check_report.py RUN_DIR/report.html [--screenshot out.png]

The report itself carries no script. This checker writes a probe copy of it into a temporary
folder: the same HTML plus a ``<base>`` that points at the run folder (so the relative figure
paths resolve as before) and a tiny script that, on page load, stores on ``<body>`` how many
images decoded (``data-images-ok``), how many there are (``data-images-total``) and how many
stick out of the window (``data-images-overflow``). It reads those attributes from the DOM that
Chromium dumps for the probe, then screenshots the report itself and checks that the screenshot
is not blank. Exit status: 0 when everything rendered, 1 when a check failed, 2 when Chromium is
missing or the report cannot be opened.
"""

from __future__ import annotations

import argparse
import html
import re
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
from matplotlib import image as mpimg

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


# Injected into the probe copy: counts the images that decoded and those wider than the window.
IMAGE_CHECK_JS = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var width = document.documentElement.clientWidth;
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; });
  var wide = imgs.filter(function (i) { return i.getBoundingClientRect().right > width + 1; });
  document.body.dataset.imagesOk = ok.length;
  document.body.dataset.imagesTotal = imgs.length;
  document.body.dataset.imagesOverflow = wide.length;
});
"""


class CheckError(Exception):
    """A check on the rendered report failed."""


class _ImageSources(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.sources.append(dict(attrs).get("src") or "")


def find_chromium() -> str:
    """Returns the path of a Chromium executable on PATH or raises ``FileNotFoundError``."""
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    raise FileNotFoundError(
        f"no Chromium on PATH (looked for {', '.join(CHROMIUM_NAMES)}); "
        "install it with: apt-get install -y chromium"
    )


def missing_images(report: Path) -> tuple[int, list[str]]:
    """Returns the number of <img> tags and the relative sources whose file does not exist."""
    parser = _ImageSources()
    parser.feed(report.read_text(encoding="utf-8"))
    missing = [
        src for src in parser.sources if "://" not in src and not (report.parent / src).is_file()
    ]
    return len(parser.sources), missing


def run_chromium(chromium: str, args: list[str], url: str, timeout: float) -> str:
    """Runs Chromium once with a fresh profile and returns its stdout."""
    with tempfile.TemporaryDirectory(prefix="check-report-") as profile:
        cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, url]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as err:
            raise CheckError(f"chromium did not finish within {timeout:.0f} s: {cmd}") from err
    if done.returncode != 0:
        raise CheckError(f"chromium exited with {done.returncode}: {done.stderr.strip()[-800:]}")
    return done.stdout


def probe_page(report: Path) -> str:
    """The report's HTML with a ``<base>`` at its folder and :data:`IMAGE_CHECK_JS` added.

    Both go right after ``<head>`` so that the base applies to every relative link after it.
    """
    text = report.read_text(encoding="utf-8")
    head = re.search(r"<head\b[^>]*>", text, flags=re.IGNORECASE)
    if head is None:
        raise CheckError(f"{report} has no <head>; is it a report written by write_report?")
    base = html.escape(report.resolve().parent.as_uri() + "/", quote=True)
    probe = f'<base href="{base}"><script>{IMAGE_CHECK_JS}</script>'
    return text[: head.end()] + probe + text[head.end() :]


def dom_image_counts(dom: str) -> dict[str, int]:
    """Reads the ``data-images-*`` attributes the probe's script set on <body>."""
    body = re.search(r"<body\b[^>]*>", dom)
    if body is None:
        raise CheckError("chromium's DOM dump has no <body>; the page did not load")
    counts = {
        key: int(value)
        for key, value in re.findall(r'data-images-(ok|total|overflow)="(\d+)"', body.group(0))
    }
    if "ok" not in counts or "total" not in counts:
        raise CheckError(
            "the probe's image check did not run (no data-images-ok/total on <body>); did the "
            "page's load event fire within the virtual time budget?"
        )
    return counts


def screenshot_stats(path: Path) -> tuple[int, int, int]:
    """Returns width, height and the number of distinct colours of a PNG screenshot."""
    if not path.is_file() or path.stat().st_size == 0:
        raise CheckError(f"chromium wrote no screenshot at {path}")
    pixels = mpimg.imread(path)
    rgb = (np.asarray(pixels)[..., :3] * 255).astype(np.uint8).reshape(-1, 3)
    colours = len(np.unique(rgb[:: max(1, len(rgb) // 200_000)], axis=0))
    return int(pixels.shape[1]), int(pixels.shape[0]), colours


def check_report(
    report: Path, screenshot: Path, *, window: str = "1400,3000", timeout: float = 90.0
) -> str:
    """Runs every check and returns a one-line summary; raises ``CheckError`` on a failure."""
    total, missing = missing_images(report)
    if missing:
        raise CheckError(f"{len(missing)} of {total} image file(s) are missing: {missing}")
    chromium = find_chromium()
    with tempfile.TemporaryDirectory(prefix="check-report-probe-") as folder:
        probe = Path(folder) / "probe.html"
        probe.write_text(probe_page(report), encoding="utf-8")
        args = ["--virtual-time-budget=5000", f"--window-size={window}", "--dump-dom"]
        dom = run_chromium(chromium, args, probe.as_uri(), timeout)
    counts = dom_image_counts(dom)
    if counts["total"] != total:
        raise CheckError(f"the browser saw {counts['total']} images, the HTML has {total}")
    if counts["ok"] != counts["total"]:
        raise CheckError(f"only {counts['ok']} of {counts['total']} images rendered in chromium")
    if counts.get("overflow", 0):
        raise CheckError(f"{counts['overflow']} image(s) stick out of a {window} window")
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    url = report.resolve().as_uri()
    run_chromium(chromium, [f"--screenshot={screenshot}", f"--window-size={window}"], url, timeout)
    width, height, colours = screenshot_stats(screenshot)
    if colours < 16:
        raise CheckError(f"screenshot {screenshot} looks blank: {colours} distinct colour(s)")
    return (
        f"OK: {counts['ok']}/{counts['total']} images rendered; screenshot {screenshot} "
        f"({width}x{height}, {colours} colours)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="path of report.html")
    parser.add_argument(
        "--screenshot", type=Path, help="PNG to write (default: next to the report)"
    )
    parser.add_argument("--window-size", default="1400,3000", help="W,H of the browser window")
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds per chromium run")
    args = parser.parse_args(argv)
    report: Path = args.report
    if not report.is_file():
        print(f"error: report not found: {report}", file=sys.stderr)
        return 2
    screenshot = args.screenshot or report.with_name("report_screenshot.png")
    try:
        print(check_report(report, screenshot, window=args.window_size, timeout=args.timeout))
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except CheckError as err:
        print(f"FAILED: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
