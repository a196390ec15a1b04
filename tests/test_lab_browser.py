"""The lab server end to end: ``scripts/lab.sh`` (a Dask scheduler, two workers and the app,
with the lab password on), driven by headless Chromium. An unauthenticated browser sees the
login and no page; after the password, one short fit of the demo scene runs on a worker
and its result is shown. Kept to one fit so that it stays short."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from test_browser import (
    ROOT,
    VIEWPORT,
    assert_no_exception,
    metric_value,
    set_fit_effort,
    settle,
)

from bench.app_server import CHROMIUM, CHROMIUM_ARGS, SERVER_OPTIONS, free_port, wait_for_health

PASSWORD = "lab-test-password"

pytestmark = [
    pytest.mark.lab,
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is missing (apt-get install chromium)"),
]


def test_one_fit_through_the_lab_server(tmp_path):
    from playwright.sync_api import sync_playwright

    store, log = tmp_path / "store", tmp_path / "lab.log"
    port = free_port()
    env = dict(os.environ, DROPLET_STORE=str(store), DROPLET_PYTHON=sys.executable, DROPLET_LAB_PASSWORD=PASSWORD)
    env.pop("DROPLET_SCHEDULER", None)
    with open(log, "w") as out:
        lab = subprocess.Popen(
            [
                "bash",
                "scripts/lab.sh",
                "--port",
                str(port),
                "--scheduler-port",
                str(free_port()),
                *SERVER_OPTIONS,
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_health(base, lab, log, timeout_s=120)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport=VIEWPORT)
            page.goto(base + "/fit")
            settle(page, 2.0)
            # Before the password: the login, no page, no menu.
            assert page.locator("[data-testid='stSidebarNav'] a").count() == 0
            assert page.get_by_role("button", name="Fit", exact=True).count() == 0
            assert "asks for the lab's password" in page.locator("[data-testid='stMain']").inner_text()
            page.get_by_label("Lab password").fill(PASSWORD)
            page.get_by_role("button", name="Enter").click()
            settle(page)
            set_fit_effort(page, "50", arrow_rights=0)  # the least effort: where the fit runs is the point here
            page.get_by_role("button", name="Fit", exact=True).click()
            try:
                # Generous: on 2 busy cores a worker's first fit also imports and compiles JAX.
                page.wait_for_selector(".st-key-fit_overlay .js-plotly-plot", timeout=420_000)
            except Exception:
                page.screenshot(path=str(tmp_path / "failure.png"))
                shown = page.locator("[data-testid='stMain']").inner_text()[-1500:]
                jobs = sorted(p.name for p in (store / "jobs").glob("*")) if (store / "jobs").is_dir() else []
                raise AssertionError(
                    f"no overlay after the fit; the page shows:\n{shown}\njob files: {jobs}\n"
                    f"log:\n{log.read_text()[-3000:]}"
                ) from None
            settle(page)
            assert_no_exception(page, "fit page on the lab server")
            assert int(metric_value(page, "Droplets")) > 0
            browser.close()
        # Progress travelled through the store's job files: the fit ran on a Dask worker.
        assert (store / "jobs").is_dir()
        assert len(list((store / "fits").iterdir())) == 1
    finally:
        os.killpg(lab.pid, signal.SIGTERM)
        try:
            lab.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(lab.pid, signal.SIGKILL)
            lab.wait()
