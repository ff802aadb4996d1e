"""The README's pictures, from a real run: `make screenshots` (needs Debian's chromium).

Runs `lookalike up --demo 300` in a temporary data directory exactly as `make run` does (so, on a
machine without the ImageNet weights, on the demo's random weights, and the pictures say so), then
`lookalike evaluate --html`, and photographs the gallery's grid, an item's neighbours and the
report with headless Chromium. Then it posts copies of two demo pictures under new ids (the demo
has no duplicates) and photographs `lookalike evaluate --hygiene --html`: `docs/hygiene.png`.
`python docs/screenshots.py hygiene` makes that one picture only.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
from playwright.sync_api import sync_playwright

from cli.client import ApiClient
from cli.redis_server import free_port
from shared.records import FINISHED

DOCS = Path(__file__).resolve().parent
LOOKALIKE = str(Path(sys.executable).with_name("lookalike"))
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
# Copies posted for the hygiene report: a duplicate listing (2 copies) and a placeholder (5).
COPIES = {"10004": ["90001", "90002"], "10010": [f"9100{n}" for n in range(1, 6)]}
# Under the demo's random weights distinct items score 0.986 to 0.999: only copies pass this.
DEMO_THRESHOLD = "0.9995"


def wait_for(log: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up waiting for {text!r}; see {log}")
        time.sleep(1)


def photograph(url: str, report: Path) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(f"{url}/")
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(DOCS / "gallery-grid.png"))
        page.locator("#catalog .card").nth(3).click()
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(DOCS / "gallery.png"))
        page.goto(report.as_uri())
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(DOCS / "report.png"), full_page=False)
        page.evaluate("document.getElementById('worst').scrollIntoView()")
        page.screenshot(path=str(DOCS / "report-sheet.png"))
        browser.close()


def post_copies(url: str, catalog: Path) -> None:
    """Post COPIES (the original's picture and metadata under new ids); wait for their tasks."""
    client = ApiClient(url)
    original = {p["product_id"]: p for p in client.products() if p["product_id"] in COPIES}
    tasks = [
        client.post_product(copy, catalog / "images" / f"{pid}.jpg", original[pid]["metadata"])
        for pid, copies in COPIES.items()
        for copy in copies
    ]
    for task in tasks:
        while client.get(f"/api/v1/tasks/{task['task_id']}")["state"] not in FINISHED:
            time.sleep(0.5)


def photograph_hygiene(url: str, tmp: Path, env: dict[str, str]) -> None:
    report = tmp / "hygiene.html"
    subprocess.run(
        [LOOKALIKE, "evaluate", "--hygiene", "--threshold", DEMO_THRESHOLD, "--api-url", url,
         "--html", str(report), "-q"],
        env=env, check=True, timeout=600,
    )  # fmt: skip
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1100, "height": 1250})
        page.goto(report.as_uri())
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(DOCS / "hygiene.png"))
        browser.close()


def main(only_hygiene: bool = False) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        port, log = free_port(), Path(tmp) / "up.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOOKALIKE_")}
        env["LOOKALIKE_DATA_DIR"] = str(Path(tmp) / "data")
        up = subprocess.Popen(
            [LOOKALIKE, "up", "--port", str(port), "--demo", "300"],
            env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for(log, f"gallery: {url}/", 900)
            if not only_hygiene:
                report = Path(tmp) / "report.html"
                subprocess.run(
                    [LOOKALIKE, "evaluate", "--api-url", url, "--html", str(report), "-q"],
                    env=env, check=True, timeout=600,
                )  # fmt: skip
                requests.get(f"{url}/readyz", timeout=5)
                photograph(url, report)
            post_copies(url, Path(tmp) / "data" / "demo-catalog")
            photograph_hygiene(url, Path(tmp), env)
        finally:
            up.send_signal(signal.SIGTERM)
            up.wait(120)
    names = sorted(path.name for path in DOCS.glob("*.png"))
    print("wrote " + ", ".join(f"docs/{name}" for name in names))


if __name__ == "__main__":
    main(only_hygiene=sys.argv[1:] == ["hygiene"])
