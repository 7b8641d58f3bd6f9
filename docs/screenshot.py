"""Take the README's screenshots of a run's metric charts in the MLflow UI, in headless Chromium.

Needs Debian's chromium (`apt-get install chromium`) and the playwright Python package (its
bundled driver only; no browser download): `pip install playwright`. Start the UI first:

    mlflow server --backend-store-uri sqlite:///mlflow.db --port 5055
    python docs/screenshot.py RUN_ID EXPERIMENT_ID docs/mlflow-grad-norms.png [SEARCH]
"""

from __future__ import annotations

import sys
import time

from playwright.sync_api import sync_playwright

CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]


def main(run_id: str, experiment_id: str, out: str, search: str = "", ui: str = "http://127.0.0.1:5055") -> None:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1000})
        page.goto(f"{ui}/#/experiments/{experiment_id}/runs/{run_id}/model-metrics", wait_until="networkidle")
        if search:
            page.get_by_placeholder("Search metric charts").fill(search)
        time.sleep(10)  # the charts load lazily after the page settles
        page.screenshot(path=out)
        browser.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
