"""Real-browser test of the Time-lapse page: a stack made from the real example image (a window
moving across it, 2 px a frame at the fitted resolution, frames coarsened 4x) is uploaded as
a multi-page TIFF, fitted, stepped through and shared; the share link opened in a new browser
context (a new session) shows the same stack fit at the same frame. Screenshot:
``docs/timelapse.png``. Helpers and the server come from ``tests/test_browser.py``.
"""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
import tifffile

from droplet_core.imaging.images import downscale, load_image
from tests.test_browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    EXCEPTION,
    ROOT,
    VIEWPORT,
    assert_no_exception,
    go,
    settle,
    shot,
    streamlit_server,
    wait_for_metric,
)

EXAMPLE = ROOT.parent / "shared" / "data" / "example.jpg"
FRAMES = 5
STEP_PX = 8  # of the example: 2 px a frame at the 4x coarsened frames

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not EXAMPLE.exists(), reason=f"{EXAMPLE} is missing")]


def example_stack(path) -> None:
    """A window of 960x720 px moving right across the example, each frame coarsened 4x (240x180)."""
    image = load_image(EXAMPLE)
    frames = [downscale(image[400:1120, 300 + i * STEP_PX : 1260 + i * STEP_PX], 4) for i in range(FRAMES)]
    tifffile.imwrite(
        path, np.round(np.stack(frames) * 255).astype(np.uint8), photometric="rgb", metadata={"axes": "TYXS"}
    )


def test_example_stack_in_the_browser(tmp_path):
    from playwright.sync_api import sync_playwright

    stack_path = tmp_path / "example_stack.tif"
    example_stack(stack_path)
    with streamlit_server(tmp_path / "store", tmp_path / "server.log") as base, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_context(viewport=VIEWPORT).new_page()
        page.goto(base)
        settle(page)
        go(page, "Time-lapse")
        with page.expect_file_chooser() as chooser:
            page.locator(".st-key-tl_upload [data-testid='stFileUploaderDropzone']").click()
        chooser.value.set_files(str(stack_path))
        time.sleep(2.0)
        page.locator(".st-key-tl_interval input").fill("5s")
        page.get_by_role("button", name="Fit stack").click()
        assert wait_for_metric(page, "Frames", lambda v: v == str(FRAMES), timeout_s=600) == str(FRAMES)
        settle(page, 2.0)
        assert_no_exception(page, "time-lapse results")
        assert page.locator(EXCEPTION).count() == 0
        link = page.locator("[data-testid='stCode']", has_text="stack=").first.inner_text().strip()
        assert link.endswith("frame=1")
        # The last frame, by its link: the window moved 4 x 2 px right, so the droplets drifted 8 px left.
        last = link[: -len("frame=1")] + f"frame={FRAMES}"
        page.goto(last)
        settle(page, 2.0)
        assert_no_exception(page, "time-lapse, last frame")
        caption = page.get_by_text(re.compile(r"fit · \d+ droplets")).first.inner_text()
        drift_x = float(re.search(r"drift \((-?[\d.]+), (-?[\d.]+)\)", caption).group(1))
        assert abs(drift_x + 2.0 * (FRAMES - 1)) <= 1.0, caption
        assert caption.startswith(f"frame {FRAMES} · reuse fit")
        shot(page, "timelapse")

        other = browser.new_context(viewport=VIEWPORT).new_page()
        other.goto(last)
        settle(other, 2.0)
        assert_no_exception(other, "time-lapse share link")
        assert wait_for_metric(other, "Frames", lambda v: v == str(FRAMES), timeout_s=60) == str(FRAMES)
        assert other.get_by_text(re.compile(rf"frame {FRAMES} · reuse fit")).count() >= 1
        browser.close()
