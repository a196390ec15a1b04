"""The fit queue on a Dask cluster (a LocalCluster of two worker processes): progress and
Stop across processes, a worker killed mid-fit, identical requests computed once."""

from __future__ import annotations

import os
import signal
import time

import pytest
from cluster_fits import slow_fit
from test_jobs import IMAGE, IMAGE_SHA

from droplet_core.fit_ids import fit_key
from droplet_core.service.fit_tasks import JobFiles
from droplet_core.service.jobs import JobRegistry, QueueSettings
from droplet_core.service.store import FitStore
from droplet_core.settings import FitSettings

pytestmark = pytest.mark.slow  # a Dask cluster of worker processes

TIMEOUT_S = 60


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    distributed = pytest.importorskip("distributed")
    pids = tmp_path_factory.mktemp("pids") / "fit-pids"
    # The workers inherit the environment at start: the fake fit logs its process there.
    os.environ["DROPLET_TEST_PIDS"] = str(pids)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as local:
        yield local, pids
    del os.environ["DROPLET_TEST_PIDS"]


@pytest.fixture
def queue(cluster, tmp_path):
    local, pids = cluster
    pids.write_text("")
    local.scheduler.allowed_failures = 3
    settings = QueueSettings(local.scheduler_address, session_limit=10)
    registry = JobRegistry(FitStore(tmp_path), fit_fn=slow_fit, queue=settings)
    yield registry
    registry.close()


def fit_pids(cluster) -> list[int]:
    return [int(line) for line in cluster[1].read_text().split()]


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_progress_and_stop_cross_to_the_worker(queue):
    settings = FitSettings(steps=400)
    job = queue.submit(IMAGE, IMAGE_SHA, settings, session="alice")
    twin = queue.submit(IMAGE, IMAGE_SHA, settings, session="bob")
    assert twin is job
    wait_for(lambda: job.snapshot().step >= 20, "progress from the worker")
    snap = job.snapshot()
    assert snap.status == "running" and snap.droplets == 2 and len(snap.losses) == snap.step // 10
    job.stop()
    assert job.wait(TIMEOUT_S)
    snap = job.snapshot()
    assert snap.status == "stopped" and 20 <= snap.step < 400
    stored = queue.store.load(snap.fit_id)
    assert stored.status == "stopped" and stored.report.steps_done == snap.step
    assert not (queue.store.root / "jobs" / job.token).exists(), "the job's progress files are removed"


def test_queue_order_is_kept_on_the_cluster(queue):
    # Two worker threads: Alice's first two fits start at once, Bob's waits for one of them only.
    alice = [queue.submit(IMAGE, IMAGE_SHA, FitSettings(steps=60, seed=s), session="alice") for s in range(4)]
    wait_for(lambda: alice[1].snapshot().step > 0, "two fits running")
    bob = queue.submit(IMAGE, IMAGE_SHA, FitSettings(steps=10, seed=9), session="bob")
    assert bob.snapshot().fits_ahead == 2
    assert alice[3].snapshot().fits_ahead == 4
    assert bob.wait(TIMEOUT_S)
    assert not alice[3].done()
    for job in alice:
        assert job.wait(TIMEOUT_S)
    assert [job.snapshot().status for job in [*alice, bob]] == ["done"] * 5


def kill_worker_running_the_fit(cluster, tries_before: int) -> None:
    wait_for(lambda: len(fit_pids(cluster)) > tries_before, "the fit to start on a worker")
    os.kill(fit_pids(cluster)[-1], signal.SIGKILL)


def test_a_worker_killed_mid_fit_is_retried_and_nothing_half_written_is_stored(queue, cluster):
    settings = FitSettings(steps=60, seed=1)
    job = queue.submit(IMAGE, IMAGE_SHA, settings)
    wait_for(lambda: job.snapshot().step >= 10, "progress")
    kill_worker_running_the_fit(cluster, 0)
    assert job.wait(TIMEOUT_S)
    assert job.snapshot().status == "done", job.snapshot().error
    assert len(set(fit_pids(cluster))) == 2, "the fit ran again in another worker process"
    store = queue.store
    assert [report.fit_id for report in store.list_fits()] == [fit_key(IMAGE_SHA, settings)]
    assert store.load(job.fit_id).report.steps_done == 60
    assert list((store.root / ".tmp").iterdir()) == []


def test_a_fit_whose_workers_keep_dying_fails_with_a_message(queue, cluster):
    cluster[0].scheduler.allowed_failures = 0
    job = queue.submit(IMAGE, IMAGE_SHA, FitSettings(steps=60, seed=2))
    kill_worker_running_the_fit(cluster, 0)
    assert job.wait(TIMEOUT_S)
    snap = job.snapshot()
    assert snap.status == "failed"
    assert snap.error.startswith("the Dask worker computing this fit died")
    assert queue.store.list_fits() == []
    # The workers come back (the nanny restarts them): the same request is computed again.
    cluster[0].scheduler.allowed_failures = 3
    again = queue.submit(IMAGE, IMAGE_SHA, FitSettings(steps=60, seed=2))
    assert again is not job and again.wait(TIMEOUT_S)
    assert again.snapshot().status == "done"


def test_an_unreachable_scheduler_fails_the_fit_with_a_message(tmp_path):
    registry = JobRegistry(FitStore(tmp_path), fit_fn=slow_fit, queue=QueueSettings("tcp://127.0.0.1:9"))
    try:
        job = registry.submit(IMAGE, IMAGE_SHA, FitSettings(steps=10))
        assert job.wait(TIMEOUT_S)
        assert job.snapshot().error.startswith("cannot reach the Dask scheduler at tcp://127.0.0.1:9")
    finally:
        registry.close()


def test_batch_images_run_on_the_cluster_in_the_same_queue(queue):
    executor = queue.executor("batch 1", FitSettings())
    futures = [executor.submit(os.getpid) for _ in range(3)]
    pids = {future.result(timeout=TIMEOUT_S) for future in futures}
    assert os.getpid() not in pids
    assert len(pids) <= 2  # the cluster's two worker processes


def test_job_files_left_by_a_vanished_app_are_removed_by_the_next(tmp_path):
    store = FitStore(tmp_path)
    old, current = JobFiles(store.root, "old"), JobFiles(store.root, "current")
    for files in (old, current):
        files.request_stop()
    hour_ago = time.time() - 2 * 3600
    os.utime(old.folder, (hour_ago, hour_ago))
    JobRegistry(store, queue=QueueSettings("tcp://127.0.0.1:9")).close()
    assert not old.folder.exists() and current.folder.exists()
