"""The job registry, driven by a fake fit function whose chunks the test releases one by one."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from droplet_core.fit_ids import fit_key
from droplet_core.results import FitReport, FitResult
from droplet_core.service.jobs import JobRegistry, JobSnapshot
from droplet_core.service.store import FitStore
from droplet_core.settings import FitProgress, FitSettings

IMAGE = np.zeros((8, 8, 3), np.float32)
IMAGE_SHA = hashlib.sha256(b"job test image").hexdigest()
SETTINGS = FitSettings(steps=40)
CHUNK = 10
WAIT_S = 5.0


class FakeFitError(ValueError):
    """Stands in for droplet_core.inference.engine.FitError (a ValueError)."""


def build_result(settings, image_sha256, steps_done, parent_fit_id, status, warm_start=None) -> FitResult:
    """What run_fit returns; like it, a warm-started fit's losses begin with its parent's."""
    stopped_at = steps_done if status == "stopped" else None
    losses = np.linspace(10, 1, steps_done, dtype=np.float32)
    if warm_start is not None:
        losses = np.concatenate([warm_start.losses, losses])
    fit_id = fit_key(image_sha256, settings, parent_fit_id, stopped_at_step=stopped_at)
    return FitResult(
        report=FitReport(
            fit_id=fit_id,
            image_sha256=image_sha256,
            settings=settings,
            status=status,
            created=datetime.now(UTC).isoformat(),
            steps_done=steps_done,
            total_steps_done=len(losses),
            final_loss=100.0 / steps_done if steps_done else None,
            parent_fit_id=parent_fit_id,
        ),
        droplets=pd.DataFrame({"x": [1.0, 2.0], "y": [3.0, 4.0], "radius": [1.5, 2.5]}),
        observed=np.zeros((4, 4, 1), np.float32),
        reconstruction=np.zeros((4, 4, 1), np.float32),
        losses=losses,
        params={"bg_auto_loc": np.float32(0.1)},
        warm_start=None,
        appearance={},
    )


class FakeFit:
    """A fit in chunks of CHUNK steps; each chunk waits for ``release()``; honours ``stop``.

    With ``gated=False`` chunks run without waiting. ``fail`` is raised at the first chunk.
    """

    def __init__(self, gated: bool = True, fail: Exception | None = None) -> None:
        self.gated = gated
        self.fail = fail
        self.calls = 0
        self.seeds_run: list[int] = []
        self.started = threading.Event()
        self._chunks = threading.Semaphore(0)

    def release(self, chunks: int = 1) -> None:
        for _ in range(chunks):
            self._chunks.release()

    def __call__(self, image, settings, *, image_sha256, progress=None, stop=None, warm_start=None):
        self.calls += 1
        self.seeds_run.append(settings.seed)
        self.started.set()
        parent = warm_start.fit_id if warm_start is not None else None
        step = 0
        while step < settings.steps:
            if stop is not None and stop.is_set():
                return build_result(settings, image_sha256, step, parent, "stopped", warm_start)
            if self.gated and not self._chunks.acquire(timeout=WAIT_S):
                raise TimeoutError("test never released the chunk")
            if self.fail is not None:
                raise self.fail
            step = min(step + CHUNK, settings.steps)
            progress(
                FitProgress(step=step, total_steps=settings.steps, loss=100.0 / step, elapsed_s=step / 1000, droplets=2)
            )
        return build_result(settings, image_sha256, step, parent, "done", warm_start)


@pytest.fixture
def store(tmp_path):
    return FitStore(tmp_path)


@pytest.fixture
def make_registry(store):
    registries = []

    def make(fit_fn, **kwargs):
        registry = JobRegistry(store, fit_fn=fit_fn, **kwargs)
        registries.append(registry)
        return registry

    yield make
    for registry in registries:
        registry.close()


def wait_until(condition, timeout=WAIT_S):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_run_to_completion_stores_the_result(store, make_registry):
    fake = FakeFit(gated=False)
    job = make_registry(fake).submit(IMAGE, IMAGE_SHA, SETTINGS)
    assert job.wait(WAIT_S)
    snap = job.snapshot()
    assert snap == JobSnapshot(
        fit_id=fit_key(IMAGE_SHA, SETTINGS),
        status="done",
        step=40,
        total_steps=40,
        loss=2.5,
        elapsed_s=0.04,
        droplets=2,
        losses=(10.0, 5.0, 100.0 / 30, 2.5),
        error=None,
    )
    assert snap.finished
    assert store.has(job.fit_id)
    assert job.result().fit_id == job.fit_id


def test_losses_grow_while_running(make_registry):
    fake = FakeFit()
    job = make_registry(fake).submit(IMAGE, IMAGE_SHA, SETTINGS)
    assert fake.started.wait(WAIT_S)
    first = job.snapshot()
    assert (first.status, first.step, first.losses, first.loss) == ("running", 0, (), None)
    assert not first.finished and not job.done() and job.result() is None
    for chunks in (1, 2, 3):
        fake.release()
        wait_until(lambda chunks=chunks: len(job.snapshot().losses) == chunks)
        snap = job.snapshot()
        assert snap.status == "running"
        assert snap.step == chunks * CHUNK
    fake.release()
    assert job.wait(WAIT_S)
    assert job.snapshot().status == "done"


def test_identical_concurrent_submits_share_one_fit(make_registry):
    fake = FakeFit()
    registry = make_registry(fake)
    barrier = threading.Barrier(8)
    jobs = []

    def submit():
        barrier.wait()
        jobs.append(registry.submit(IMAGE, IMAGE_SHA, SETTINGS))

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(job) for job in jobs}) == 1
    fake.release(4)
    assert jobs[0].wait(WAIT_S)
    assert fake.calls == 1
    assert registry.get(jobs[0].fit_id) is jobs[0]
    assert registry.jobs() == [jobs[0]]


def test_store_hit_is_done_without_fitting(store, make_registry):
    stored = FakeFit(gated=False)(IMAGE, SETTINGS, image_sha256=IMAGE_SHA, progress=lambda p: None)
    store.save(stored)
    fake = FakeFit()
    job = make_registry(fake).submit(IMAGE, IMAGE_SHA, SETTINGS)
    assert job.done()
    assert fake.calls == 0
    snap = job.snapshot()
    assert (snap.status, snap.fit_id, snap.step, snap.droplets, snap.losses) == ("done", stored.fit_id, 40, 2, ())
    np.testing.assert_array_equal(job.result().losses, stored.losses)


def test_finished_done_job_is_reused_without_reloading(store, make_registry):
    fake = FakeFit(gated=False)
    registry = make_registry(fake)
    job = registry.submit(IMAGE, IMAGE_SHA, SETTINGS)
    assert job.wait(WAIT_S)
    assert registry.submit(IMAGE, IMAGE_SHA, SETTINGS) is job
    assert fake.calls == 1


def test_warm_start_gets_its_own_key(store, make_registry):
    fake = FakeFit(gated=False)
    registry = make_registry(fake)
    first = registry.submit(IMAGE, IMAGE_SHA, SETTINGS)
    assert first.wait(WAIT_S)
    second = registry.submit(IMAGE, IMAGE_SHA, SETTINGS, warm_start=first.result())
    assert second.wait(WAIT_S)
    assert second.fit_id == fit_key(IMAGE_SHA, SETTINGS, first.fit_id) != first.fit_id
    assert second.result().report.parent_fit_id == first.fit_id
    assert len(second.result().losses) == 80
    assert second.snapshot().step == second.snapshot().total_steps == 40
    assert fake.calls == 2
    assert store.has(second.fit_id)


def test_stop_stores_the_partial_fit_and_a_new_request_recomputes(store, make_registry):
    fake = FakeFit()
    registry = make_registry(fake)
    job = registry.submit(IMAGE, IMAGE_SHA, SETTINGS)
    fake.release()
    wait_until(lambda: job.snapshot().step == CHUNK)
    job.stop()
    fake.release()  # the chunk in progress when stop() came
    assert job.wait(WAIT_S)
    snap = job.snapshot()
    assert snap.status == "stopped"
    assert snap.step == 2 * CHUNK
    partial_id = fit_key(IMAGE_SHA, SETTINGS, stopped_at_step=2 * CHUNK)
    assert snap.fit_id == job.result().fit_id == partial_id
    assert store.has(partial_id)
    assert not store.has(job.fit_id)
    assert registry.get(partial_id) is job

    again = registry.submit(IMAGE, IMAGE_SHA, SETTINGS)
    assert again is not job
    fake.release(4)
    assert again.wait(WAIT_S)
    assert again.snapshot().status == "done"
    assert fake.calls == 2
    assert store.has(job.fit_id)


def test_request_while_stopping_starts_a_new_job(make_registry):
    fake = FakeFit()
    registry = make_registry(fake)
    job = registry.submit(IMAGE, IMAGE_SHA, SETTINGS)
    assert fake.started.wait(WAIT_S)
    job.stop()
    again = registry.submit(IMAGE, IMAGE_SHA, SETTINGS)
    assert again is not job
    assert registry.get(job.fit_id) is again
    fake.release(1 + 4)  # the chunk the stopping job was in, then the whole new fit
    assert job.wait(WAIT_S) and again.wait(WAIT_S)
    assert (job.snapshot().status, again.snapshot().status) == ("stopped", "done")


def test_stop_while_queued_finishes_without_fitting(store, make_registry):
    fake = FakeFit()
    registry = make_registry(fake, max_workers=1)
    running = registry.submit(IMAGE, IMAGE_SHA, SETTINGS)
    queued = registry.submit(IMAGE, IMAGE_SHA, FitSettings(steps=40, seed=1))
    queued.stop()
    fake.release(4)
    assert running.wait(WAIT_S) and queued.wait(WAIT_S)
    assert fake.calls == 1
    assert (queued.snapshot().status, queued.result()) == ("stopped", None)
    assert [report.fit_id for report in store.list_fits()] == [running.fit_id]


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (FakeFitError("fit diverged (loss is NaN)\nat step 10"), "fit diverged (loss is NaN) at step 10"),
        (RuntimeError("out of\nmemory"), "fit failed: RuntimeError: out of memory"),
    ],
)
def test_failure_is_one_line_and_nothing_is_stored(store, make_registry, error, message):
    fake = FakeFit(fail=error)
    registry = make_registry(fake)
    job = registry.submit(IMAGE, IMAGE_SHA, SETTINGS)
    fake.release()
    assert job.wait(WAIT_S)
    snap = job.snapshot()
    assert (snap.status, snap.error, job.result()) == ("failed", message, None)
    assert store.list_fits() == []
    # A failed fit is retried on the next identical request.
    retry = registry.submit(IMAGE, IMAGE_SHA, SETTINGS)
    assert retry is not job
    fake.release()
    assert retry.wait(WAIT_S)
    assert fake.calls == 2


def test_result_filed_under_a_wrong_key_is_a_failure(store, make_registry):
    def wrong_key_fit(image, settings, *, image_sha256, progress=None, stop=None, warm_start=None):
        return build_result(settings, image_sha256, settings.steps, "f" * 32, "done")

    job = make_registry(wrong_key_fit).submit(IMAGE, IMAGE_SHA, SETTINGS)
    assert job.wait(WAIT_S)
    assert job.snapshot().status == "failed"
    assert job.snapshot().error.startswith("fit failed: RuntimeError: fit returned id ")
    assert store.list_fits() == []


@pytest.mark.slow
def test_importing_jobs_and_making_a_registry_does_not_load_jax(tmp_path):
    code = (
        "import sys; from droplet_core.service.jobs import JobRegistry; from droplet_core.service.store import FitStore; "
        f"JobRegistry(FitStore({str(tmp_path)!r})).close(); "
        "assert 'jax' not in sys.modules and 'droplet_core.inference.engine' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.slow
def test_interpreter_exit_stops_a_running_fit_and_stores_it(tmp_path):
    # Without the exit hook this process would wait for the endless fit forever.
    code = f"""
import threading, numpy as np, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_jobs import IMAGE, IMAGE_SHA, build_result
from droplet_core.service.jobs import JobRegistry
from droplet_core.settings import FitSettings
from droplet_core.service.store import FitStore

started = threading.Event()

def endless_fit(image, settings, *, image_sha256, progress=None, stop=None, warm_start=None):
    started.set()
    stop.wait()
    return build_result(settings, image_sha256, 5, None, "stopped")

registry = JobRegistry(FitStore({str(tmp_path)!r}), fit_fn=endless_fit)
registry.submit(IMAGE, IMAGE_SHA, FitSettings(steps=10**9))
started.wait(5)
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
    assert [report.status for report in FitStore(tmp_path).list_fits()] == ["stopped"]


def test_unstorable_result_is_a_failure_not_a_user_message(store, make_registry):
    def fit_without_created(image, settings, *, image_sha256, progress=None, stop=None, warm_start=None):
        result = build_result(settings, image_sha256, settings.steps, None, "done")
        return replace(result, report=replace(result.report, created="not a time"))

    job = make_registry(fit_without_created).submit(IMAGE, IMAGE_SHA, SETTINGS)
    assert job.wait(WAIT_S)
    assert job.snapshot().error.startswith("fit failed: ValueError: ")
    assert store.list_fits() == []
