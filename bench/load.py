"""Load: N simultaneous browser sessions against one app server.

Run from the repository root (needs Debian's ``chromium`` and Playwright)::

    python -m bench.load --sessions 8          # fits in the app's process
    python -m bench.load --sessions 8 --lab    # fits on a local Dask cluster (scheduler + 2 workers)

Starts ``streamlit run app.py`` on a free port with a temporary store, in a process that
counts the fits the engine computes (each ``run_fit`` call appends its fit key to a log
file; with ``--lab`` the workers count, through a Dask preload of this module), and that
logs the server-side time of every script run (``DROPLET_RUN_TIMES``). Then N browser
sessions (Playwright contexts in one headless Chromium) at once:

1. open the app (the built-in demo image) and go to the Fit page;
2. all press **Fit** with the same settings at the same moment (identical requests);
3. wait for the result, read its share link, and open the link in a new tab.

It prints the sessions that completed with no error (no exception on any page, the same
fit id and droplet count as every other session), the browsers' wall times (median / max:
opening the app, opening the Fit page, opening the share link, and the wait for the fit),
the server's own time per script run by page (median / 95th percentile; wall time, and the
CPU time of the run's own script thread, which no browser or worker sharing the cores adds
to), the server process's peak memory, and asserts that the identical concurrent requests were computed once.
Browsers and server share this machine's cores, so the browsers' times include the
browsers' own cost; the server-side times do not.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

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
FIT_LOG_ENV = "DROPLET_BENCH_FIT_LOG"
STEPS_INDEX = 2  # the Fit page's "Steps" options 50, 100, 150, ...: 150 steps


@dataclass
class SessionRecord:
    """What one browser session saw; times in seconds."""

    index: int
    times: dict[str, float] = field(default_factory=dict)
    fit_id: str | None = None
    droplets: str | None = None
    error: str | None = None


def count_fits() -> None:
    """Make ``droplet_core.inference.engine.run_fit`` log the key of every fit it computes."""
    import droplet_core.inference.engine
    from droplet_core.fit_ids import fit_key

    real_run_fit = droplet_core.inference.engine.run_fit

    def counting_run_fit(image, settings, *, image_sha256, warm_start=None, **options):
        key = fit_key(image_sha256, settings, warm_start.fit_id if warm_start is not None else None)
        with open(os.environ[FIT_LOG_ENV], "a") as log:
            log.write(key + "\n")
        return real_run_fit(image, settings, image_sha256=image_sha256, warm_start=warm_start, **options)

    # The job queue looks the engine up at call time, so it finds the counting one.
    droplet_core.inference.engine.run_fit = counting_run_fit


def dask_setup(worker) -> None:
    """Dask preload hook (``dask worker --preload bench.load``): count the worker's fits."""
    count_fits()


def serve(port: int) -> None:
    """Server process: count ``run_fit`` calls, then run Streamlit in this process."""
    from streamlit.web import cli

    count_fits()
    sys.argv = ["streamlit", *streamlit_command(ROOT / "app.py", port)]
    cli.main()


def start_cluster(env: dict, log: Path, workers: int = 2) -> tuple[list[subprocess.Popen], str]:
    """A Dask scheduler and ``workers`` workers (one thread each) that count their fits."""
    address = f"tcp://127.0.0.1:{free_port()}"
    env = dict(env, PYTHONPATH=str(ROOT))
    scheduler = ["scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1], "--no-dashboard"]
    worker = ["worker", address, "--nthreads", "1", "--no-dashboard", "--preload", "bench.load"]
    with open(log, "w") as out:
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "dask", *args], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
            )
            for args in [scheduler] + [worker] * workers
        ]
    return procs, address


def start_server(store: Path, fit_log: Path, log: Path, extra_env: dict | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = dict(os.environ, DROPLET_STORE=str(store), **{FIT_LOG_ENV: str(fit_log)}, **(extra_env or {}))
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.load", "--serve", str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(base, proc, log, timeout_s=90)
    except RuntimeError:
        proc.kill()
        raise
    return proc, base


async def settle(page, timeout_ms: int) -> None:
    """Wait until the script has finished, twice a moment apart (reruns follow runs)."""
    await page.wait_for_selector(IDLE, timeout=timeout_ms)
    await asyncio.sleep(0.5)
    await page.wait_for_selector(IDLE, timeout=timeout_ms)


async def metric_value(page, label: str) -> str:
    metric = page.locator("[data-testid='stMetric']", has_text=label).first
    return (await metric.locator("[data-testid='stMetricValue']").inner_text()).strip()


async def check_no_exception(page, where: str) -> None:
    if await page.locator(EXCEPTION).count():
        raise AssertionError(f"exception on {where}: {await page.locator(EXCEPTION).first.inner_text()}")


async def run_session(browser, base: str, record: SessionRecord, all_ready: asyncio.Barrier, timeout_s: float) -> None:
    timeout_ms = int(timeout_s * 1000)
    context = await browser.new_context(viewport={"width": 1300, "height": 1400})
    try:
        page = await context.new_page()
        started = time.perf_counter()
        await page.goto(base)
        await settle(page, timeout_ms)
        await page.wait_for_selector(".st-key-channels_fig .js-plotly-plot", timeout=timeout_ms)
        record.times["open app"] = time.perf_counter() - started
        await check_no_exception(page, "the image page")

        started = time.perf_counter()
        await page.locator("[data-testid='stSidebarNav'] a", has_text="Fit").first.click()
        await settle(page, timeout_ms)
        await page.get_by_role("button", name="Fit", exact=True).wait_for(timeout=timeout_ms)
        record.times["open Fit page"] = time.perf_counter() - started
        steps = page.locator(".st-key-w_steps input[type='range']")
        await steps.focus()
        await steps.press("Home")
        for _ in range(STEPS_INDEX):
            await steps.press("ArrowRight")

        await all_ready.wait()  # every session presses Fit at the same moment
        started = time.perf_counter()
        await page.get_by_role("button", name="Fit", exact=True).click()
        await page.wait_for_selector(".st-key-fit_overlay .js-plotly-plot", timeout=timeout_ms)
        await settle(page, timeout_ms)
        record.times["fit result"] = time.perf_counter() - started
        await check_no_exception(page, "the Fit page")
        record.droplets = await metric_value(page, "Droplets")
        share = (await page.locator("[data-testid='stCode']").first.inner_text()).strip()
        match = re.search(r"/results\?fit=([0-9a-f]{32})$", share)
        if not match:
            raise AssertionError(f"no share link on the Fit page: {share!r}")
        record.fit_id = match.group(1)

        tab = await context.new_page()
        started = time.perf_counter()
        await tab.goto(base + f"/results?fit={record.fit_id}")
        await tab.wait_for_selector(".st-key-overlay .js-plotly-plot", timeout=timeout_ms)
        record.times["open share link"] = time.perf_counter() - started
        await settle(tab, timeout_ms)
        await check_no_exception(tab, "the share link")
        shown = await metric_value(tab, "Droplets")
        if shown != record.droplets:
            raise AssertionError(f"share link shows {shown} droplets, the Fit page {record.droplets}")
    except Exception as exc:  # noqa: BLE001 - a failed session is reported, not fatal
        record.error = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
    finally:
        await context.close()


async def drive(base: str, sessions: int, timeout_s: float) -> list[SessionRecord]:
    from playwright.async_api import async_playwright

    records = [SessionRecord(index) for index in range(sessions)]
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            all_ready = asyncio.Barrier(sessions)
            await asyncio.gather(*(run_session(browser, base, r, all_ready, timeout_s) for r in records))
        finally:
            await browser.close()
    return records


def percentile_95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[-1] if len(values) > 1 else values[0]


def report_server_times(run_times: str, peak_rss_mb: float | None) -> None:
    """Server-side seconds per script run, by page (wall and the run's own CPU), and the
    server's peak memory."""
    by_page: dict[str, list[tuple[float, float]]] = {}
    for line in run_times.splitlines():
        page, wall_s, cpu_s = line.split("\t")
        by_page.setdefault(page, []).append((float(wall_s), float(cpu_s)))
    print(
        f"server time per script run{'':<2}{'runs':>6}{'wall: median':>14}{'p95':>7}{'max':>7}"
        f"{'CPU: median':>13}{'p95':>7}{'max':>7}"
    )

    def row(label: str, runs: list[tuple[float, float]]) -> None:
        wall, cpu = [w for w, _ in runs], [c for _, c in runs]
        print(
            f"  {label:<26}{len(runs):>6}{statistics.median(wall):>14.3f}{percentile_95(wall):>7.3f}{max(wall):>7.3f}"
            f"{statistics.median(cpu):>13.3f}{percentile_95(cpu):>7.3f}{max(cpu):>7.3f}"
        )

    for page, runs in sorted(by_page.items()):
        row(page, runs)
    others = [run for page, runs in by_page.items() if page != "Fit" for run in runs]
    if others:
        row("all pages but Fit", others)
    if peak_rss_mb is not None:
        print(f"app server peak memory (VmHWM): {peak_rss_mb:.0f} MB")


def peak_rss_mb(pid: int) -> float | None:
    """The peak resident memory of process ``pid`` (Linux), in MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def report(records: list[SessionRecord], fit_keys: list[str], server_log: str, wall_s: float) -> bool:
    """Print the figures; True if every check passed."""
    good = [r for r in records if r.error is None]
    fit_ids = {r.fit_id for r in good}
    consistent = len(fit_ids) == 1 and len({r.droplets for r in good}) == 1
    print(f"sessions: {len(records)} started, {len(good)} completed with no error ({wall_s:.0f} s wall)")
    for r in records:
        if r.error:
            print(f"  session {r.index}: {r.error}")
    print(f"{'step':<18}{'n':>4}{'median s':>10}{'max s':>8}")
    for step in ("open app", "open Fit page", "fit result", "open share link"):
        values = [r.times[step] for r in records if step in r.times]
        if values:
            print(f"{step:<18}{len(values):>4}{statistics.median(values):>10.2f}{max(values):>8.2f}")
    computed = {key: fit_keys.count(key) for key in dict.fromkeys(fit_keys)}
    print(
        f"identical fit requests: {len(good)} sessions asked for fit {', '.join(sorted(filter(None, fit_ids)))}; "
        f"the engine computed {len(fit_keys)} fit(s): {computed}"
    )
    server_errors = server_log.count("Traceback")
    print(f"server log: {server_errors} traceback(s)")
    once = len(fit_keys) == 1 and fit_ids == {fit_keys[0]}
    return len(good) == len(records) and consistent and once and server_errors == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=8, help="simultaneous browser sessions (default 8)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds any one page may take (default 300)")
    parser.add_argument(
        "--lab",
        action="store_true",
        help="run the fits on a local Dask cluster (a scheduler and two workers), as scripts/lab.sh",
    )
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)  # the server process
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    if not os.path.exists(CHROMIUM):
        print(f"error: {CHROMIUM} is missing (apt-get install chromium)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="droplet-load-") as work:
        work = Path(work)
        fit_log, server_log, run_times = work / "fits.log", work / "server.log", work / "run-times.tsv"
        fit_log.touch()
        run_times.touch()
        env = {"DROPLET_RUN_TIMES": str(run_times)}
        cluster = []
        if args.lab:
            cluster, address = start_cluster(dict(os.environ, **{FIT_LOG_ENV: str(fit_log)}), work / "cluster.log")
            env["DROPLET_SCHEDULER"] = address
        print(f"fits run {'on a local Dask cluster (2 workers)' if args.lab else 'in the app server process'}")
        proc, base = start_server(work / "store", fit_log, server_log, env)
        try:
            started = time.perf_counter()
            records = asyncio.run(drive(base, args.sessions, args.timeout))
            wall_s = time.perf_counter() - started
            peak = peak_rss_mb(proc.pid)
        finally:
            for each in [proc, *reversed(cluster)]:
                stop(each, timeout_s=15)
        passed = report(records, fit_log.read_text().split(), server_log.read_text(), wall_s)
        report_server_times(run_times.read_text(), peak)
    assert passed, "load check failed (see above)"
    print("ok: every session completed, and the identical concurrent fit requests were computed once")
    return 0


if __name__ == "__main__":
    sys.exit(main())
