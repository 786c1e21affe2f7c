"""The documentation's picture of a report: `clinreadnet report sample_data/`, opened in Chromium.

    python scripts/report_screenshot.py [--out docs/report-sample.jpg]

Needs the report and test extras (playwright) and Debian's chromium.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "report-sample.jpg")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "report.html"
        subprocess.run([sys.executable, "-m", "clinreadnet_cli", "report", "sample_data", "-o", str(page)],
                       check=True, cwd=REPO)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
            # three quarters of the pixels, as a JPEG: about 80 KB instead of a 320 KB PNG in the tree
            tab = browser.new_page(viewport={"width": 1000, "height": 1250}, device_scale_factor=0.75)
            tab.goto(page.as_uri())
            tab.screenshot(path=str(args.out), type="jpeg", quality=75)  # the first series: plot, summary, lowest slices with maps
            browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
