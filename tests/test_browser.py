"""The explorer end to end in a real browser: `streamlit run` on a loopback port, driven by headless Chromium.

Chromium is Debian's package (`apt-get install -y chromium`), driven through Playwright's Python package with
`executable_path`: Playwright's own browser download is not used. The test saves the screenshot the README shows,
docs/explorer.png, and a copy in its temporary folder.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--no-sandbox",  # CI containers run as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
STARTUP_SECONDS = 120  # streamlit answering its health check
RUN_SECONDS = 300  # one script run in the browser: the first loads the model, and the CPU may be shared
SCREENSHOT = ROOT / "docs" / "explorer.png"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None, reason="no Chromium on PATH: install it with `apt-get install -y chromium` (CI must have it)"
    ),
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def app_url(demo_cache: Path, tmp_path: Path) -> Iterator[str]:
    """`streamlit run streamlit_app.py` on a free 127.0.0.1 port, stopped (and waited for) whatever happens."""
    port = free_port()
    env = {**os.environ, "VITLAB_CACHE": str(demo_cache)}
    log_path = tmp_path / "streamlit.log"
    command = [
        sys.executable, "-m", "streamlit", "run", str(ROOT / "streamlit_app.py"),
        "--server.headless", "true", "--server.address", "127.0.0.1", "--server.port", str(port),
        "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none", "--client.toolbarMode", "viewer",
    ]
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_health(f"http://127.0.0.1:{port}/_stcore/health", server, log_path)
            yield f"http://127.0.0.1:{port}/"
        finally:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=15)


def wait_for_health(url: str, server: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"streamlit exited with status {server.returncode}:\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.read() == b"ok":
                    return
        except OSError:
            time.sleep(0.25)
    pytest.fail(f"streamlit did not answer {url} within {STARTUP_SECONDS} s:\n{log_path.read_text()}")


def wait_until_done(page, images: int) -> None:
    """Wait until the script run has finished (no 'Stop' status widget) and at least `images` images are drawn."""
    page.wait_for_function(
        """(images) => !document.querySelector('[data-testid="stStatusWidget"]')
                      && document.querySelectorAll('[data-testid="stImage"] img').length >= images
                      && !document.querySelector('[data-stale="true"]')""",
        arg=images, timeout=RUN_SECONDS * 1000, polling=250,
    )


def test_explorer_renders_and_follows_a_slider_in_chromium(app_url: str, tmp_path: Path):
    from playwright.sync_api import expect, sync_playwright

    page_errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1450})
            page.on("pageerror", lambda error: page_errors.append(str(error)))
            page.goto(app_url, timeout=RUN_SECONDS * 1000)
            wait_until_done(page, images=10)  # 5 views, 4 heads, the distance plot
            expect(page.get_by_text("Block 4, head 0: bright patches")).to_be_visible()

            head_slider = page.locator('[data-testid="stSlider"]').filter(has_text="Head").get_by_role("slider")
            head_slider.focus()
            head_slider.press("ArrowRight")
            expect(page.get_by_text("Block 4, head 1: bright patches")).to_be_visible(timeout=RUN_SECONDS * 1000)
            wait_until_done(page, images=10)

            images = page.locator('[data-testid="stImage"] img')
            page.wait_for_function(  # every image has finished loading (a broken one too, with naturalWidth 0)
                """() => Array.from(document.querySelectorAll('[data-testid="stImage"] img')).every(i => i.complete)""",
                timeout=RUN_SECONDS * 1000,
            )
            widths = images.evaluate_all("images => images.map(image => image.naturalWidth)")
            assert len(widths) >= 10 and all(width > 0 for width in widths), widths
            assert page.locator('[data-testid="stException"]').count() == 0
            assert page.locator('[data-testid="stAlertContentError"]').count() == 0
            assert not page_errors, page_errors

            page.screenshot(path=str(tmp_path / "explorer.png"))
            page.screenshot(path=str(tmp_path / "explorer_full_page.png"), full_page=True)
            SCREENSHOT.parent.mkdir(exist_ok=True)
            shutil.copyfile(tmp_path / "explorer.png", SCREENSHOT)
        finally:
            browser.close()
