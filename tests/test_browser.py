"""The explorer end to end in a real browser: `streamlit run` on a loopback port, driven by headless Chromium.

Chromium is Debian's package (`apt-get install -y chromium`), driven through Playwright's Python package with
`executable_path`: Playwright's own browser download is not used. The tests save the screenshots the README shows
(explorer.png, explorer-tour.png, -projector, -gallery, -compare) in their temporary folders; only
`python -m pytest tests/test_browser.py --update-screenshots` copies them into docs/, on purpose, so running the suite
never changes the checkout. One server and one Chromium serve every test of the module; each test opens
its own pages, so each is its own session. The slider's end-to-end time is printed (run with -s to see it), not
asserted: speed targets are bench rows.
"""

from __future__ import annotations

import os
import re
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
SCREENSHOT = ROOT / "docs" / "explorer.png"  # the README's; the modes' lie beside it

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


@pytest.fixture(scope="module")
def app_url(demo_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`streamlit run streamlit_app.py` on a free 127.0.0.1 port, one server for every test of this module, stopped
    (and waited for) whatever happens. Its working folder holds runs/other, a copy of the demo run, to compare,
    runs/vit-hf, a Hugging Face checkpoint to import, and
    the project's .streamlit/config.toml, which streamlit reads from there: the server runs as the README serves it.
    Random ViT-B/16 weights lie in its torchvision cache (TORCH_HOME): the ImageNet source works, nothing downloaded."""
    import torch
    from torchvision.models import vit_b_16

    folder = tmp_path_factory.mktemp("explorer_server")
    shutil.copytree(demo_cache / "demo", folder / "runs" / "other")
    from vit_sources import save_hf_classifier

    save_hf_classifier(folder / "runs" / "vit-hf")  # a Hugging Face save_pretrained folder, random weights
    shutil.copytree(ROOT / ".streamlit", folder / ".streamlit")
    weights = folder / "torch" / "hub" / "checkpoints" / "vit_b_16-c867db91.pth"
    weights.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(vit_b_16().state_dict(), weights)
    port = free_port()
    env = {**os.environ, "VITLAB_CACHE": str(demo_cache), "TORCH_HOME": str(folder / "torch")}
    log_path = folder / "streamlit.log"
    command = [
        sys.executable, "-m", "streamlit", "run", str(ROOT / "streamlit_app.py"),
        "--server.headless", "true", "--server.address", "127.0.0.1", "--server.port", str(port),
        "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none", "--client.toolbarMode", "viewer",
    ]
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
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


@pytest.fixture(scope="module")
def browser(app_url: str):
    """One headless Chromium for the module; each test opens its own pages (each page is its own session)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            yield chromium
        finally:
            chromium.close()


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


def open_page(browser, app_url: str, images: int = 10):
    """A new session on the app, its first run finished; page errors are collected in page.errors."""
    page = browser.new_page(viewport={"width": 1400, "height": 1450}, accept_downloads=True)
    page.errors = []
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.goto(app_url, timeout=RUN_SECONDS * 1000)
    wait_until_done(page, images=images)
    return page


def assert_healthy(page) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0
    assert page.locator('[data-testid="stAlertContentError"]').count() == 0
    assert not page.errors, page.errors


def choose_mode(page, mode: str, images: int) -> None:
    page.locator('[data-testid="stSidebar"]').get_by_text(mode, exact=True).click()
    wait_until_done(page, images=images)


def save_screenshot(page, tmp_path: Path, name: str, update: bool) -> None:
    """A screenshot in the test's temporary folder once every image has loaded; with `update`
    (--update-screenshots) also the README's docs/<name>."""
    page.wait_for_function(
        """() => Array.from(document.querySelectorAll('[data-testid="stImage"] img'))
                      .every(i => i.complete && i.naturalWidth > 0)""",
        timeout=RUN_SECONDS * 1000,
    )
    page.screenshot(path=str(tmp_path / name))
    if update:
        shutil.copyfile(tmp_path / name, SCREENSHOT.parent / name)


class _FakePage:
    """What save_screenshot needs of a Playwright page: a wait that returns and a screenshot that writes bytes."""

    def wait_for_function(self, script: str, timeout: float) -> None:
        pass

    def screenshot(self, path: str) -> None:
        Path(path).write_bytes(b"png")


@pytest.mark.parametrize("update", [False, True])
def test_screenshots_reach_docs_only_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, update: bool):
    docs = tmp_path / "docs"
    docs.mkdir()
    monkeypatch.setattr(sys.modules[__name__], "SCREENSHOT", docs / "explorer.png")
    save_screenshot(_FakePage(), tmp_path, "explorer-tour.png", update)
    assert (tmp_path / "explorer-tour.png").read_bytes() == b"png"
    assert (docs / "explorer-tour.png").exists() == update


def slider_seconds(page, moves: int = 6, block: int = 4) -> list[float]:
    """Seconds from a head-slider key press until its views are drawn, for `moves` moves between heads 1 and 0
    of `block` (the page starts at head 1); printed, not asserted: speed targets are bench rows."""
    head_slider = page.locator('[data-testid="stSlider"]').filter(has_text="Head").get_by_role("slider")
    seconds = []
    for move in range(moves):
        head_slider.focus()
        started = time.perf_counter()
        head_slider.press("ArrowLeft" if move % 2 == 0 else "ArrowRight")
        page.wait_for_function(
            """(text) => Array.from(document.querySelectorAll('[data-testid="stCaptionContainer"]'))
                          .some(c => c.innerText.includes(text))
                      && !document.querySelector('[data-stale="true"]')
                      && Array.from(document.querySelectorAll('[data-testid="stImage"] img'))
                          .every(i => i.complete && i.naturalWidth > 0)""",
            arg=f"Block {block}, head {0 if move % 2 == 0 else 1}: bright patches", timeout=60_000,
            polling="raf",
        )
        seconds.append(time.perf_counter() - started)
    return seconds


def test_explorer_renders_and_follows_a_slider_in_chromium(browser, app_url: str, tmp_path: Path,
                                                           update_screenshots: bool):
    from playwright.sync_api import expect

    page = open_page(browser, app_url)  # 5 views, 4 heads, the distance plot
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
    assert_healthy(page)
    page.screenshot(path=str(tmp_path / "explorer_full_page.png"), full_page=True)
    save_screenshot(page, tmp_path, SCREENSHOT.name, update_screenshots)

    seconds = sorted(slider_seconds(page))
    print(f"\nslider move, end to end in headless Chromium: median {seconds[len(seconds) // 2]:.3f} s "
          f"(min {seconds[0]:.3f}, max {seconds[-1]:.3f}) over {len(seconds)} moves")
    page.close()


def test_a_slider_move_on_vit_b_16_in_chromium(browser, app_url: str):
    """ImageNet ViT-B/16 (random weights) on a dataset image: 12 heads redrawn per move (the speed target's)."""
    from playwright.sync_api import expect

    page = open_page(browser, app_url)
    page.get_by_label("Model source").click()
    page.get_by_role("option", name="ImageNet ViT-B/16").click()
    expect(page.get_by_text("All 12 heads of block")).to_be_visible(timeout=RUN_SECONDS * 1000)
    wait_until_done(page, images=10)
    head_slider = page.locator('[data-testid="stSlider"]').filter(has_text="Head").get_by_role("slider")
    head_slider.focus()
    head_slider.press("ArrowRight")  # head 1, where slider_seconds starts
    expect(page.get_by_text(re.compile(r"Block \d+, head 1: bright patches"))).to_be_visible(timeout=60_000)
    block = int(re.search(r"Block (\d+), head 1: bright", page.inner_text("body"))[1])
    assert_healthy(page)
    seconds = sorted(slider_seconds(page, block=block))
    print(f"\nslider move on ViT-B/16, end to end in headless Chromium: median {seconds[len(seconds) // 2]:.3f} s "
          f"(min {seconds[0]:.3f}, max {seconds[-1]:.3f}) over {len(seconds)} moves")
    page.close()


def test_the_tour_walks_every_step_in_chromium(browser, app_url: str, tmp_path: Path,
                                               update_screenshots: bool):
    from playwright.sync_api import expect

    from vitlab.explorer.tour import TOUR

    page = open_page(browser, app_url)
    choose_mode(page, "Guided tour", images=0)
    for index, step in enumerate(TOUR):
        expect(page.get_by_text(f"Step {index + 1} of {len(TOUR)}")).to_be_visible(timeout=RUN_SECONDS * 1000)
        wait_until_done(page, images=0)  # the previous step's elements are gone once the run has finished
        expect(page.get_by_role("heading", name=step.title)).to_be_visible()
        page.get_by_text("I have my prediction: show me").click()
        expect(page.get_by_text(step.answer)).to_be_visible(timeout=RUN_SECONDS * 1000)
        wait_until_done(page, images=0)
        assert_healthy(page)
        if step.key == "rollout":
            save_screenshot(page, tmp_path, "explorer-tour.png", update_screenshots)
        if index < len(TOUR) - 1:
            page.get_by_role("button", name="Next").click()
    assert page.get_by_role("button", name="Next").is_disabled()
    page.close()


def test_projector_mode_in_chromium(browser, app_url: str, tmp_path: Path,
                                    update_screenshots: bool):
    page = open_page(browser, app_url)
    sidebar = page.locator('[data-testid="stSidebar"]')
    for label in ("Projector mode", "Show the patch grid"):
        sidebar.get_by_text(label, exact=True).click()
        wait_until_done(page, images=10)
    sidebar.get_by_text("patch-exact", exact=True).click()
    wait_until_done(page, images=10)
    size = page.locator("h1").first.evaluate("h => parseFloat(getComputedStyle(h).fontSize)")
    assert size >= 47, size  # 3rem: the projector's title
    assert_healthy(page)
    save_screenshot(page, tmp_path, "explorer-projector.png", update_screenshots)
    page.close()


def test_five_students_at_once_all_see_the_views(browser, app_url: str):
    pages = []
    for _ in range(5):  # all five sessions start before any is waited for: their runs overlap on the server
        page = browser.new_page(viewport={"width": 1400, "height": 1450})
        page.errors = []
        page.on("pageerror", lambda error, page=page: page.errors.append(str(error)))
        page.goto(app_url, timeout=RUN_SECONDS * 1000)
        pages.append(page)
    for page in pages:
        wait_until_done(page, images=10)
        widths = page.locator('[data-testid="stImage"] img').evaluate_all("i => i.map(image => image.naturalWidth)")
        assert len(widths) >= 10
        assert_healthy(page)
    for page in pages:
        page.close()


def test_gallery_opens_an_image_in_chromium(browser, app_url: str, tmp_path: Path,
                                            update_screenshots: bool):
    from playwright.sync_api import expect

    page = open_page(browser, app_url)
    choose_mode(page, "Gallery", images=16)
    assert_healthy(page)
    save_screenshot(page, tmp_path, "explorer-gallery.png", update_screenshots)
    caption = page.locator('[data-testid="stCaptionContainer"]').filter(has_text="predicted").nth(3).inner_text()
    index = int(caption.split(":")[0].lstrip("#"))
    page.get_by_role("button", name="Open in Explore").nth(3).click()
    wait_until_done(page, images=10)
    expect(page.get_by_text("Block 4, head 0: bright patches")).to_be_visible()
    assert page.get_by_label(re.compile("Image index")).input_value() == str(index)
    assert_healthy(page)
    page.close()


def test_downloads_are_a_png_and_the_raw_maps_in_chromium(browser, app_url: str, tmp_path: Path):
    import numpy as np
    from PIL import Image

    page = open_page(browser, app_url)
    with page.expect_download() as png_download:
        page.get_by_role("button", name="Download PNG").first.click()
    png_path = tmp_path / png_download.value.suggested_filename
    png_download.value.save_as(png_path)
    with Image.open(png_path) as picture:
        assert picture.format == "PNG" and picture.size == (448, 448)
    with page.expect_download() as npz_download:
        page.get_by_role("button", name="Download the raw maps (.npz)").click()
    npz_path = tmp_path / npz_download.value.suggested_filename
    npz_download.value.save_as(npz_path)
    with np.load(npz_path) as arrays:
        assert arrays["attention"].shape == (4, 4, 65, 65)  # (blocks, heads, tokens, tokens): 8x8 patches + class
        assert arrays["rollout"].shape == (8, 8) and arrays["class_specific"].shape == (8, 8)
        assert arrays["probs"].shape == (10,) and np.isclose(arrays["probs"].sum(), 1.0, atol=1e-4)  # 10 classes
    assert_healthy(page)
    page.close()


def test_compare_side_by_side_in_chromium(browser, app_url: str, tmp_path: Path,
                                          update_screenshots: bool):
    from playwright.sync_api import expect

    page = open_page(browser, app_url)
    choose_mode(page, "Compare", images=1)
    wait_until_done(page, images=3)  # the three aligned views: first, second (the base), difference
    expect(page.get_by_role("heading", name="Difference (second - first)")).to_be_visible()
    assert_healthy(page)
    save_screenshot(page, tmp_path, "explorer-compare.png", update_screenshots)
    page.close()


def test_a_hugging_face_checkpoint_in_the_runs_folder_is_explored_in_chromium(browser, app_url: str, tmp_path: Path,
                                                                             update_screenshots: bool):
    """The runs folder lists runs/vit-hf; its views draw, its predictions carry its own id2label names."""
    from playwright.sync_api import expect

    page = open_page(browser, app_url)
    page.get_by_label("Model source").click()
    page.get_by_role("option", name="A vitlab checkpoint").click()
    page.get_by_label("Run under runs/").click()
    page.get_by_role("option", name="runs/vit-hf").click()
    expect(page.get_by_text("vit-hf imported from huggingface")).to_be_visible(timeout=RUN_SECONDS * 1000)
    wait_until_done(page, images=10)  # 5 views and its 4 heads, as on the demo model
    predictions = page.locator('[data-testid="stProgress"]').all_inner_texts()
    assert sorted(re.sub(r": .*", "", text.strip()) for text in predictions) == ["cat", "dog", "eel"], predictions
    assert_healthy(page)
    save_screenshot(page, tmp_path, "explorer-imported.png", update_screenshots)
    page.close()
