"""The server-side timing of page runs (``app_support.run_times``) that ``bench.load`` reports."""

import time

from app_support.run_times import RUN_TIMES_ENV_VAR, timed_run


def logged_runs(path) -> list[tuple[str, float, float]]:
    return [
        (page, float(wall), float(cpu))
        for page, wall, cpu in (line.split("\t") for line in path.read_text().splitlines())
    ]


def test_a_run_that_waits_costs_wall_time_but_no_cpu(tmp_path, monkeypatch):
    log = tmp_path / "runs.tsv"
    monkeypatch.setenv(RUN_TIMES_ENV_VAR, str(log))
    with timed_run("Image"):
        time.sleep(0.3)  # as a run waiting for another session's figure, or for a core
    with timed_run("Results"):
        deadline = time.thread_time() + 0.2
        while time.thread_time() < deadline:
            pass
    (waiting_page, waiting_wall, waiting_cpu), (busy_page, busy_wall, busy_cpu) = logged_runs(log)
    assert (waiting_page, busy_page) == ("Image", "Results")
    assert waiting_wall >= 0.3 and waiting_cpu < 0.05
    assert busy_cpu >= 0.2 and busy_wall >= busy_cpu


def test_nothing_is_logged_unless_asked(tmp_path, monkeypatch):
    monkeypatch.delenv(RUN_TIMES_ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path)
    with timed_run("Image"):
        pass
    assert list(tmp_path.iterdir()) == []
