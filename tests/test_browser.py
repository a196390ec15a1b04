"""One real-browser end-to-end test: headless Chromium (Debian's package) via Playwright.

Starts ``streamlit run app.py`` on a free port with a temporary store, then, as a user
would: opens the app (demo scene), runs a short fit on the Fit page, sees the overlay and
the fit's verdict, visits every page, refits reusing the first fit's droplet look, uploads
the real 16-bit fluorescence image (``../shared/data/dna_droplets_fluorescence.tif``),
sees it contrast-stretched, fits it and sees the verdict say how well that went, goes back
to the demo (its fit current again), runs a two-image batch on the Batch page, and opens
the share link in a fresh browser context (a new session) as the FIRST request of a
second, freshly started server process, where it must show the same droplet count without
refitting, while that new session's Compare page lists no one else's fits. Screenshots of
each page go to docs/.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from app_support.app import PAGE_SPECS
from bench.app_server import (
    CHROMIUM,
    CHROMIUM_ARGS,
    EXCEPTION,
    IDLE,
    free_port,
    stop,
    streamlit_command,
    wait_for_health,
)

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
VIEWPORT = {"width": 1400, "height": 1700}
FLUORESCENCE = ROOT.parent / "shared" / "data" / "dna_droplets_fluorescence.tif"

pytestmark = [
    pytest.mark.slow,  # starts a server and a browser
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is missing (apt-get install chromium)"),
]


@contextmanager
def streamlit_server(store: Path, log: Path):
    port = free_port()
    env = dict(os.environ, DROPLET_STORE=str(store))
    cmd = [sys.executable, "-m", "streamlit", *streamlit_command("app.py", port), "--client.toolbarMode", "minimal"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_health(base, proc, log, timeout_s=60)
        yield base
    finally:
        stop(proc)


def settle(page, pause: float = 1.0) -> None:
    """Wait until the script has finished (twice, a pause apart: reruns follow runs)."""
    page.wait_for_selector(IDLE, timeout=60_000)
    time.sleep(pause)
    page.wait_for_selector(IDLE, timeout=60_000)


def assert_no_exception(page, where: str) -> None:
    count = page.locator(EXCEPTION).count()
    assert count == 0, f"{where}: {count} exception(s): {page.locator(EXCEPTION).first.inner_text()}"


def go(page, title: str) -> None:
    """Navigate with the sidebar menu (keeps the session, as a user does)."""
    page.locator("[data-testid='stSidebarNav'] a", has_text=title).first.click()
    settle(page)


def metric_value(page, label: str) -> str:
    metric = page.locator("[data-testid='stMetric']", has_text=label).first
    return metric.locator("[data-testid='stMetricValue']").inner_text().strip()


def sidebar_text(page) -> str:
    return page.locator("[data-testid='stSidebar']").inner_text()


def wait_for_metric(page, label: str, accept, timeout_s: float = 150.0) -> str:
    """Poll until the metric ``label`` shows a value ``accept`` takes (stale values from the
    previous run are skipped)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        metric = page.locator("[data-testid='stMetric']", has_text=label)
        if metric.count():
            value = metric.first.locator("[data-testid='stMetricValue']").inner_text().strip()
            if accept(value):
                return value
        time.sleep(0.5)
    raise AssertionError(f"metric {label!r} never showed an accepted value")


def upload_image(page, path: Path) -> None:
    with page.expect_file_chooser() as chooser:
        page.locator(".st-key-upload [data-testid='stFileUploaderDropzone']").click()
    chooser.value.set_files(str(path))
    settle(page, 2.0)


def set_fit_effort(page, steps: str, arrow_rights: int) -> None:
    """Set the Fit page's effort slider (in its Advanced expander) by keyboard: Home is its
    fewest iterations, each ArrowRight the next option; then check it shows ``steps``. The
    expander is closed again, as the screenshots show it."""
    expander = page.locator("[data-testid='stExpander']", has_text="fitting effort").first
    summary = expander.locator("summary")
    if expander.locator("details[open]").count() == 0:
        summary.click()
    slider = page.locator(".st-key-w_steps input[type='range']")
    slider.focus()
    slider.press("Home")
    for _ in range(arrow_rights):
        slider.press("ArrowRight")
    settle(page)
    assert steps in page.locator(".st-key-w_steps").inner_text().split(), page.locator(".st-key-w_steps").inner_text()
    summary.click()


def shot(page, name: str) -> None:
    DOCS.mkdir(exist_ok=True)
    page.screenshot(path=str(DOCS / f"{name}.png"))


def batch_scenes(folder: Path) -> list[Path]:
    """Two small synthetic scenes as PNG files, for the Batch page."""
    from droplet_core.synthetic.scenes import SceneSettings, encode_png, make_scene

    paths = []
    for seed in (1, 2):
        path = folder / f"scene{seed}.png"
        path.write_bytes(encode_png(make_scene(seed, SceneSettings(width_px=160, height_px=120, n_droplets=60))[0]))
        paths.append(path)
    return paths


def test_demo_fit_overlay_and_share_link(tmp_path):
    from playwright.sync_api import sync_playwright

    store = tmp_path / "store"
    started = time.monotonic()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            with streamlit_server(store, tmp_path / "server1.log") as base:
                page = browser.new_page(viewport=VIEWPORT)
                page.goto(base)
                settle(page, 2.0)
                page.wait_for_selector(".st-key-channels_fig .js-plotly-plot", timeout=60_000)
                assert "500 × 400 px" in metric_value(page, "Size")
                assert page.locator("[data-testid='stSidebarNav'] a").count() == len(PAGE_SPECS)  # no legacy menu
                assert "demo scene" in sidebar_text(page) and "none yet" in sidebar_text(page)
                assert_no_exception(page, "image page")
                shot(page, "image")

                # The next step's button sits at the top of the first screen.
                page.locator(".st-key-next_fit button").click()
                settle(page)
                failure_shot = tmp_path / "failure.png"
                page.get_by_role("button", name="Fit", exact=True).click()  # default effort: 150 iterations
                # The fit runs in the background; the polling fragment redraws the page when done.
                try:
                    page.wait_for_selector(".st-key-fit_overlay .js-plotly-plot", timeout=150_000)
                except Exception as exc:
                    page.screenshot(path=str(failure_shot))
                    raise AssertionError(
                        f"no overlay after the fit; screenshot {failure_shot}, "
                        f"server log:\n{(tmp_path / 'server1.log').read_text()[-3000:]}"
                    ) from exc
                settle(page)
                assert_no_exception(page, "fit page")
                count = metric_value(page, "Droplets")
                assert int(count) > 0
                assert "Good fit." in page.locator("[data-testid='stAlertContentSuccess']").last.inner_text()
                assert "templates" in sidebar_text(page) and f"{count} droplets" in sidebar_text(page)
                share = page.locator("[data-testid='stCode']").first.inner_text().strip()
                match = re.search(r"/results\?fit=([0-9a-f]{32})$", share)
                assert match, share
                shot(page, "fit")

                go(page, "Results")
                page.wait_for_selector(".st-key-overlay .js-plotly-plot", timeout=60_000)
                assert metric_value(page, "Droplets") == count
                assert f"fit={match.group(1)}" in page.url
                assert_no_exception(page, "results page")
                # The size distribution with its statistics and their intervals; a log axis on request.
                page.wait_for_selector(".st-key-size_distribution .js-plotly-plot", timeout=60_000)
                page.wait_for_selector(".st-key-size_intervals .js-plotly-plot", timeout=60_000)
                assert page.locator("[data-testid='stDataFrame']").count() >= 2  # droplets and statistics
                page.locator(".st-key-size_log_axis label").click()
                settle(page)
                page.wait_for_function(
                    "() => document.querySelector('.st-key-size_distribution .js-plotly-plot')"
                    "?._fullLayout?.xaxis?.type === 'log'",
                    timeout=30_000,
                )
                assert_no_exception(page, "log axis")
                shot(page, "results")

                go(page, "Mask gallery")
                page.wait_for_selector(".st-key-gallery_fig .js-plotly-plot", timeout=60_000)
                assert_no_exception(page, "gallery page")
                shot(page, "gallery")

                # A second fit (the quicker gaussian model, at the least effort) so Compare has two fits to show.
                go(page, "Fit")
                page.locator(".st-key-w_model").get_by_text("gaussian", exact=True).click()
                settle(page)
                set_fit_effort(page, "50", arrow_rights=0)
                page.get_by_role("button", name="Fit", exact=True).click()
                page.wait_for_selector("[data-testid='stMetricValue']:has-text('gaussian')", timeout=150_000)
                page.wait_for_selector(".st-key-fit_overlay .js-plotly-plot", timeout=60_000)
                settle(page)
                go(page, "Compare")
                page.wait_for_selector(".st-key-compare_overlays .js-plotly-plot", timeout=60_000)
                page.wait_for_selector(".st-key-compare_distributions .js-plotly-plot", timeout=60_000)
                assert_no_exception(page, "compare page")
                shot(page, "compare")

                # The first fit's masks reused on the same image: Levenberg-Marquardt iterations,
                # and the gallery says where the masks came from.
                go(page, "Fit")
                page.locator(".st-key-w_model").get_by_text("templates", exact=True).click()
                settle(page)
                set_fit_effort(page, "150", arrow_rights=2)  # the default again: at most 150 iterations
                page.locator(".st-key-w_appearance_from input").click()
                page.get_by_role("option").filter(has_text="templates").first.click()
                settle(page)
                page.get_by_role("button", name="Fit", exact=True).click()
                # Until the new fit is drawn the gaussian fit's 50 iterations still show: wait for the model first.
                page.wait_for_selector("[data-testid='stMetricValue']:has-text('templates')", timeout=150_000)
                wait_for_metric(page, "Iterations", lambda v: v.isdigit() and 1 <= int(v) < 150)  # converged
                settle(page)
                assert_no_exception(page, "reuse fit")
                shot(page, "reuse")
                go(page, "Mask gallery")
                page.wait_for_selector(".st-key-gallery_fig .js-plotly-plot", timeout=60_000)
                assert (
                    f"learned by fit {match.group(1)[:12]}"
                    in page.locator("[data-testid='stAlert']").first.inner_text()
                )

                # A real 16-bit fluorescence image: shown stretched, named in the sidebar, no fit yet.
                go(page, "Image")
                upload_image(page, FLUORESCENCE)
                page.wait_for_selector(".st-key-image_fig .js-plotly-plot", timeout=60_000)
                assert "1024 × 1024 px" in metric_value(page, "Size")
                assert FLUORESCENCE.name in sidebar_text(page) and "none yet" in sidebar_text(page)
                # The downscale control and its caption agree.
                shown_downscale = page.locator(".st-key-w_downscale").evaluate(
                    "el => el.textContent + ' ' + [...el.querySelectorAll('input')].map(i => i.value).join(' ')"
                )
                assert "automatic" in shown_downscale and "1x" not in shown_downscale, shown_downscale
                captions = " ".join(page.locator("[data-testid='stCaptionContainer']").all_inner_texts())
                assert "measures the droplets' size" in captions, captions
                assert_no_exception(page, "fluorescence image")
                shot(page, "image_fluorescence")
                go(page, "Fit")
                assert page.locator(".st-key-fit_overlay").count() == 0  # the demo's fit is not shown here
                page.locator(".st-key-w_model").get_by_text("templates", exact=True).click()
                settle(page)
                page.locator(".st-key-w_appearance_from input").click()
                page.get_by_role("option").filter(has_text="learn the look").first.click()
                settle(page)
                page.get_by_role("button", name="Fit", exact=True).click()
                page.wait_for_selector(".st-key-fit_overlay .js-plotly-plot", timeout=150_000)
                settle(page)
                assert_no_exception(page, "fluorescence fit")
                # Fitted at the droplets' own scale: about the 100 droplets a person circles.
                assert "Good fit." in page.locator("[data-testid='stAlertContentSuccess']").last.inner_text()
                assert 85 <= int(metric_value(page, "Droplets")) <= 115, metric_value(page, "Droplets")
                captions = " ".join(page.locator("[data-testid='stCaptionContainer']").all_inner_texts())
                assert "chosen from the droplets' size" in captions, captions
                shot(page, "fit_fluorescence")
                go(page, "Results")
                page.wait_for_selector(".st-key-overlay .js-plotly-plot", timeout=60_000)
                assert_no_exception(page, "fluorescence results")
                # Its dim, blurred blobs are drawn dotted, as out of focus.
                legend = page.locator(".st-key-overlay .legendtext").all_text_contents()
                assert "out of focus" in legend, legend
                shot(page, "results_fluorescence")

                # Back to the demo: its fit is current again.
                go(page, "Image")
                page.get_by_role("button", name="Use the demo scene").click()
                settle(page)
                assert "demo scene" in sidebar_text(page) and "500 × 400 px" in metric_value(page, "Size")
                go(page, "Fit")
                page.wait_for_selector(".st-key-fit_overlay .js-plotly-plot", timeout=60_000)

                # A small batch: two uploaded scenes, the quick gaussian model, 50 steps.
                go(page, "Batch")
                with page.expect_file_chooser() as chooser:
                    page.locator(".st-key-batch_upload [data-testid='stFileUploaderDropzone']").click()
                chooser.value.set_files([str(path) for path in batch_scenes(tmp_path)])
                page.locator(".st-key-b_model").get_by_text("gaussian", exact=True).click()
                batch_steps = page.locator(".st-key-b_steps input[type='range']")
                batch_steps.focus()
                batch_steps.press("Home")
                page.get_by_role("button", name="Run batch").click()
                page.wait_for_selector(".st-key-batch_counts .js-plotly-plot", timeout=150_000)
                settle(page)
                assert_no_exception(page, "batch page")
                assert metric_value(page, "Images fitted") == "2 of 2"
                assert page.locator(".st-key-batch_download button").count() == 1
                shot(page, "batch")

            # The share link, as the very first request of a NEW server process on the same
            # store, in a fresh browser context: the stored fit, no refit, no legacy menu.
            with streamlit_server(store, tmp_path / "server2.log") as base2:
                context = browser.new_context(viewport=VIEWPORT)
                fresh = context.new_page()
                fresh.goto(share.replace(share.split("/results")[0], base2))
                settle(fresh, 2.0)
                fresh.wait_for_selector(".st-key-overlay .js-plotly-plot", timeout=60_000)
                assert metric_value(fresh, "Droplets") == count
                assert fresh.locator("[data-testid='stSidebarNav'] a").count() == len(PAGE_SPECS)
                assert fresh.locator("[data-testid='stProgress']").count() == 0
                assert "demo scene" in sidebar_text(fresh) and f"{count} droplets" in sidebar_text(fresh)
                assert_no_exception(fresh, "share link")
                # That session lists the fit it opened and nobody else's.
                go(fresh, "Compare")
                # (Compare preselects up to two of the session's fits and writes them into the URL.)
                assert fresh.url.endswith(f"/compare?fits={match.group(1)}"), fresh.url
                assert "demo scene" in fresh.locator(".st-key-w_compare").inner_text()
                # A hostile id: a clear error, no exception.
                fresh.goto(base2 + "/results?fit=../../etc/passwd")
                settle(fresh)
                assert fresh.locator("[data-testid='stAlertContentError']").count() == 1
                assert_no_exception(fresh, "bad share link")
                context.close()
        finally:
            browser.close()
    for log in ("server1.log", "server2.log"):
        text = (tmp_path / log).read_text()
        assert "Traceback" not in text and "Error" not in text, f"{log}:\n{text[-3000:]}"
    assert time.monotonic() - started < 360
