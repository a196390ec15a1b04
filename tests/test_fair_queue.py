"""The shared queue: round-robin across sessions, places and waits, the per-session limit,
batches in the same queue. Fits are fakes from test_jobs whose chunks the test releases."""

from __future__ import annotations

import pytest
from test_jobs import IMAGE, IMAGE_SHA, WAIT_S, FakeFit, wait_until

from droplet_core.service.fair_queue import FairQueue, estimated_seconds
from droplet_core.service.jobs import JobRegistry, QueueFull, QueueSettings
from droplet_core.service.store import FitStore
from droplet_core.settings import FitSettings


def test_pop_is_round_robin_across_lanes_and_order_predicts_it():
    queue = FairQueue()
    for item in ("a1", "a2", "a3"):
        queue.push("alice", item)
    assert queue.pop() == "a1"
    for item in ("b1", "b2"):
        queue.push("bob", item)
    queue.push("carol", "c1")
    predicted = list(queue.order())
    popped = [queue.pop() for _ in range(len(queue))]
    # Alice was just served; Bob and Carol, never served, go first, in the order they came.
    assert popped == predicted == ["b1", "c1", "a2", "b2", "a3"]
    assert queue.pop() is None


def test_remove_takes_an_item_out_of_its_lane():
    queue = FairQueue()
    queue.push("alice", "a1")
    queue.push("alice", "a2")
    assert queue.remove("a1") and not queue.remove("a1")
    assert (queue.queued("alice"), "a2" in queue, "a1" in queue) == (1, True, False)


def test_estimate_grows_with_steps_and_follows_measured_rates():
    short, long = FitSettings(steps=150), FitSettings(steps=1500)
    assert estimated_seconds(long) == pytest.approx(10 * estimated_seconds(short))
    assert estimated_seconds(FitSettings(model="neural", channel="rgb")) > estimated_seconds(short)
    assert estimated_seconds(short, {"templates": 0.5}) == pytest.approx(75.0)
    assert estimated_seconds(FitSettings(appearance_from="a" * 32)) < estimated_seconds(short)


def test_queue_settings_from_the_environment():
    assert QueueSettings.from_env({}) == QueueSettings(None, 3)
    settings = QueueSettings.from_env({"DROPLET_SCHEDULER": " tcp://lab:8786 ", "DROPLET_SESSION_LIMIT": "5"})
    assert settings == QueueSettings("tcp://lab:8786", 5)
    with pytest.raises(ValueError, match="DROPLET_SESSION_LIMIT must be a whole number"):
        QueueSettings.from_env({"DROPLET_SESSION_LIMIT": "many"})
    with pytest.raises(ValueError, match="at least 1"):
        QueueSettings.from_env({"DROPLET_SESSION_LIMIT": "0"})


@pytest.fixture
def registry(tmp_path):
    made = []

    def make(fit_fn, **kwargs):
        made.append(JobRegistry(FitStore(tmp_path), fit_fn=fit_fn, **kwargs))
        return made[-1]

    yield make
    for each in made:
        each.close()


def settings(seed: int, steps: int = 40) -> FitSettings:
    return FitSettings(steps=steps, seed=seed)


def test_a_small_fit_of_another_session_starts_before_a_long_sessions_queue(registry):
    fake = FakeFit()
    queue = registry(fake)
    long_jobs = [queue.submit(IMAGE, IMAGE_SHA, settings(seed, steps=400), session="alice") for seed in range(3)]
    assert fake.started.wait(WAIT_S)
    small = queue.submit(IMAGE, IMAGE_SHA, settings(99, steps=10), session="bob")
    # Alice's first fit runs; Bob's waits only for it, not for Alice's two queued fits.
    snap = small.snapshot()
    assert (snap.status, snap.fits_ahead) == ("running", 1) and snap.queued
    assert long_jobs[2].snapshot().fits_ahead == 3
    assert long_jobs[0].snapshot().fits_ahead is None  # running, not queued
    fake.release(1000)
    assert all(job.wait(WAIT_S) for job in (*long_jobs, small))
    # One worker runs fits one after another, so the order they ran in is the order they finished.
    assert fake.seeds_run == [0, 99, 1, 2], "Bob's small fit must run right after Alice's running one"


def test_wait_estimate_counts_the_fits_ahead(registry):
    fake = FakeFit()
    queue = registry(fake)
    first = queue.submit(IMAGE, IMAGE_SHA, settings(1, steps=150), session="alice")
    assert fake.started.wait(WAIT_S)
    second = queue.submit(IMAGE, IMAGE_SHA, settings(2, steps=150), session="bob")
    third = queue.submit(IMAGE, IMAGE_SHA, settings(3, steps=150), session="carol")
    one_fit = estimated_seconds(settings(1, steps=150))
    assert second.snapshot().wait_s == pytest.approx(one_fit)
    assert third.snapshot().wait_s == pytest.approx(2 * one_fit)
    fake.release(5)  # half of the running fit (chunks of 10 steps... of 150: 50 of 150)
    wait_until(lambda: first.snapshot().step == 50)
    assert second.snapshot().wait_s == pytest.approx(one_fit * 100 / 150)
    fake.release(1000)
    for job in (first, second, third):
        assert job.wait(WAIT_S)


def test_per_session_limit_counts_queued_and_running_fits_only(registry):
    fake = FakeFit()
    queue = registry(fake, queue=QueueSettings(session_limit=2))
    first = queue.submit(IMAGE, IMAGE_SHA, settings(1), session="alice")
    queue.submit(IMAGE, IMAGE_SHA, settings(2), session="alice")
    with pytest.raises(QueueFull, match="you have 2 fits queued or running.*\\(2\\)"):
        queue.submit(IMAGE, IMAGE_SHA, settings(3), session="alice")
    # The same request again shares the job; other sessions are not limited by Alice's fits.
    assert queue.submit(IMAGE, IMAGE_SHA, settings(1), session="alice") is first
    queue.submit(IMAGE, IMAGE_SHA, settings(3), session="bob")
    fake.release(4)
    assert first.wait(WAIT_S)
    third = queue.submit(IMAGE, IMAGE_SHA, settings(3), session="alice")  # bob's job, shared
    assert third.lane == "bob"
    assert queue.submit(IMAGE, IMAGE_SHA, settings(4), session="alice").lane == "alice"
    fake.release(1000)


def test_stopping_a_queued_fit_ends_it_at_once(registry):
    fake = FakeFit()
    queue = registry(fake)
    running = queue.submit(IMAGE, IMAGE_SHA, settings(1), session="alice")
    queued = queue.submit(IMAGE, IMAGE_SHA, settings(2), session="alice")
    queued.stop()
    assert queued.done() and queued.snapshot().status == "stopped"
    fake.release(4)
    assert running.wait(WAIT_S) and fake.calls == 1


def test_a_batch_shares_the_queue_as_one_lane(registry):
    fake = FakeFit()
    queue = registry(fake)
    order = []
    running = queue.submit(IMAGE, IMAGE_SHA, settings(1), session="alice")
    assert fake.started.wait(WAIT_S)
    batch = queue.executor("batch 1", settings(0))
    futures = [batch.submit(order.append, f"image {i}") for i in range(3)]
    later = queue.submit(IMAGE, IMAGE_SHA, settings(2), session="bob")
    assert later.snapshot().fits_ahead == 2  # Alice's running fit, then one image of the batch
    fake.release(1000)
    for future in futures:
        future.result(timeout=WAIT_S)
    assert running.wait(WAIT_S) and later.wait(WAIT_S)
    assert order == ["image 0", "image 1", "image 2"]


def test_closing_cancels_queued_batch_images(registry):
    fake = FakeFit()
    queue = registry(fake)
    queue.submit(IMAGE, IMAGE_SHA, settings(1), session="alice")
    assert fake.started.wait(WAIT_S)
    future = queue.executor("batch 1", settings(0)).submit(print, "never")
    queue.close(wait=False)
    assert future.cancelled()
    fake.release(1000)
