"""Every fit the app starts, in one fair queue, run in this process or on a Dask cluster.

The app keeps a single ``JobRegistry`` (in ``st.cache_resource``). Single fits, continued
fits, appearance-reuse fits and the images of batches all wait in its ``FairQueue``
(round-robin across sessions; a batch is one more lane), and start when a worker is free:

- **in-process** (the default, nothing to set up): ``max_workers`` threads of this process;
- **on a Dask cluster** (``QueueSettings.scheduler``, from ``DROPLET_SCHEDULER``): each
  fit is a task on the cluster's workers, which may have GPUs. Workers and app must see
  the same store folder (one machine or a shared file system). A running fit reports its
  progress, and learns that it should stop, through two small files under
  ``<store>/jobs/<token>/`` (``progress.json``, ``stop``). The worker stores the result
  itself (atomically, ``droplet_core.service.store``), so a worker that dies mid-fit leaves nothing
  half-written; Dask then runs the fit again on another worker, and after
  ``distributed.scheduler.allowed-failures`` deaths the job fails with a message.

Identical requests (same image, settings and warm start) share one job; a fit already in
the store is served from it without computing. Workers never call Streamlit.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass

import numpy as np

from droplet_core.results import FitResult
from droplet_core.service.fair_queue import FairQueue, estimated_seconds
from droplet_core.service.fit_tasks import (
    DONE,
    FAILED,
    RUNNING,
    STOPPED,
    FitOutcome,
    JobFiles,
    compute_fit,
    fit_on_worker,
    one_line,
    remove_stale_job_files,
)
from droplet_core.service.requests import FitFunction, request_key
from droplet_core.service.store import FitStore, StoreError
from droplet_core.settings import FitProgress, FitSettings

SCHEDULER_ENV_VAR = "DROPLET_SCHEDULER"
SESSION_LIMIT_ENV_VAR = "DROPLET_SESSION_LIMIT"
DEFAULT_SESSION_LIMIT = 3

# Finished jobs stay reachable through ``JobRegistry.get`` for a while; each holds a whole
# FitResult (images and parameters), so only the most recent ones are kept in memory.
# Stored fits remain available from the FitStore.
FINISHED_JOBS_KEPT = 16
# How often the cluster loop reads progress files and looks for finished or free workers.
_CLUSTER_POLL_S = 0.25
# How long the cluster's worker count is trusted before it is asked again.
_CAPACITY_REFRESH_S = 2.0
# How long closing waits for the fits on the cluster to stop and store what they have.
_CLOSE_WAIT_S = 30.0


class QueueFull(ValueError):
    """A session asked for more fits than its share of the queue (``session_limit``)."""


@dataclass(frozen=True)
class QueueSettings:
    """Where the app's fits run and how much of the queue one session may hold.

    Attributes
    ----------
    scheduler : address of a Dask scheduler (``tcp://host:8786``); None runs fits in
        threads of the app's process.
    session_limit : fits one session may have queued or running at once.
    """

    scheduler: str | None = None
    session_limit: int = DEFAULT_SESSION_LIMIT

    def __post_init__(self) -> None:
        if self.session_limit < 1:
            raise ValueError("the per-session limit of fits must be at least 1")

    @classmethod
    def from_env(cls, environ: dict | None = None) -> QueueSettings:
        """From ``DROPLET_SCHEDULER`` and ``DROPLET_SESSION_LIMIT`` (unset or empty: defaults).

        Raises
        ------
        ValueError
            ``DROPLET_SESSION_LIMIT`` is not a positive integer.
        """
        environ = os.environ if environ is None else environ
        scheduler = (environ.get(SCHEDULER_ENV_VAR) or "").strip() or None
        text = (environ.get(SESSION_LIMIT_ENV_VAR) or "").strip()
        try:
            limit = int(text) if text else DEFAULT_SESSION_LIMIT
        except ValueError:
            raise ValueError(f"{SESSION_LIMIT_ENV_VAR} must be a whole number, not {text!r}") from None
        return cls(scheduler=scheduler, session_limit=limit)


@dataclass(frozen=True)
class JobSnapshot:
    """A consistent copy of a job's state, for display.

    Attributes
    ----------
    fit_id : the requested fit key while running; once a result exists, the result's id
        (for a stopped fit, the id of the stored partial fit, which differs from the
        request's key).
    status : ``"running"`` (also while queued: step 0), ``"done"``, ``"stopped"`` or
        ``"failed"``.
    step, total_steps : steps completed and requested (of this fit, not counting a warm
        start's).
    loss : loss at the last report (once finished, ``report.final_loss``); None before
        the first.
    elapsed_s : fit time at the last report, as the fit measured it.
    droplets : droplet count at the last report.
    losses : the loss at each progress report (one per jitted chunk) of a fit computed by
        this registry; empty for a fit served from the store. The per-step curve of a
        finished fit is ``FitJob.result().losses``.
    error : one-line message of a failed job, else None.
    fits_ahead : while queued, the fits that start or run before this one (running ones
        included); None once it has started or finished.
    wait_s : while queued, the estimated seconds until it starts; else None.
    """

    fit_id: str
    status: str
    step: int
    total_steps: int
    loss: float | None
    elapsed_s: float
    droplets: int
    losses: tuple[float, ...]
    error: str | None
    fits_ahead: int | None = None
    wait_s: float | None = None

    @property
    def finished(self) -> bool:
        return self.status != RUNNING

    @property
    def queued(self) -> bool:
        return self.fits_ahead is not None


class FitJob:
    """One fit, queued, running or finished; created by ``JobRegistry``.

    Its state is written by the thread that runs or watches the fit and read by any number
    of session threads; a lock keeps each snapshot consistent.
    """

    def __init__(self, fit_id: str, settings: FitSettings, lane: str = "") -> None:
        self.fit_id = fit_id
        self.settings = settings
        self.lane = lane
        # Names this run's progress and stop files on a cluster (a new request for the same
        # fit while this one is stopping gets files of its own).
        self.token = uuid.uuid4().hex
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._finished = threading.Event()
        self._status = RUNNING
        self._step = 0
        self._loss: float | None = None
        self._elapsed_s = 0.0
        self._droplets = 0
        self._losses: list[float] = []
        self._error: str | None = None
        self._result: FitResult | None = None
        self._result_fit_id: str | None = None
        # Set by the registry: the request (dropped once finished) and queue callbacks.
        self._request: tuple[np.ndarray, str, FitResult | None] | None = None
        self._place: Callable[[FitJob], tuple[int, float] | None] = lambda job: None
        self._on_stop: Callable[[FitJob], None] = lambda job: None

    @classmethod
    def from_result(cls, result: FitResult) -> FitJob:
        """An already finished job wrapping a stored ``result``."""
        job = cls(result.fit_id, result.settings)
        job._finish_with(result)
        return job

    def stop(self) -> None:
        """Ask the fit to stop after its current chunk; it then finishes as ``"stopped"``.

        A job still queued finishes at once, without a result."""
        self._stop.set()
        self._on_stop(self)

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def done(self) -> bool:
        """Whether the job has finished (done, stopped or failed)."""
        return self._finished.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job finishes or ``timeout`` seconds pass; True if it finished."""
        return self._finished.wait(timeout)

    def result(self) -> FitResult | None:
        """The finished fit (complete or stopped), or None while running or after a failure."""
        with self._lock:
            return self._result

    def snapshot(self) -> JobSnapshot:
        place = None if self.done() else self._place(self)
        with self._lock:
            return JobSnapshot(
                fit_id=self._result_fit_id or self.fit_id,
                status=self._status,
                step=self._step,
                total_steps=self.settings.steps,
                loss=self._loss,
                elapsed_s=self._elapsed_s,
                droplets=self._droplets,
                losses=tuple(self._losses),
                error=self._error,
                fits_ahead=place[0] if place else None,
                wait_s=place[1] if place else None,
            )

    # -- called by the thread that runs or watches the fit -----------------------------

    def _report(self, progress: FitProgress) -> None:
        """Progress callback handed to the fit function."""
        loss = float(progress.loss)
        with self._lock:
            self._step = int(progress.step)
            self._loss = loss
            self._elapsed_s = float(progress.elapsed_s)
            self._droplets = int(progress.droplets)
            self._losses.append(loss)

    def _take_progress_record(self, record: dict) -> None:
        """Progress as a cluster worker wrote it (``JobFiles.read_progress``)."""
        with self._lock:
            self._step = int(record["step"])
            self._loss = float(record["loss"])
            self._elapsed_s = float(record["elapsed_s"])
            self._droplets = int(record["droplets"])
            self._losses = [float(v) for v in record["losses"]]

    def _finish_with(self, result: FitResult) -> None:
        # Step and loss come from the report, not ``result.losses``: a warm-started fit's losses
        # begin with its parent's, while progress reports count this fit's steps only.
        final_loss = result.report.final_loss
        with self._lock:
            self._result = result
            self._result_fit_id = result.fit_id
            self._status = result.status
            self._step = result.report.steps_done
            self._loss = float(final_loss) if final_loss is not None else self._loss
            self._droplets = len(result.droplets)
            self._request = None
        self._finished.set()

    def _finish_without_result(self, status: str, error: str | None) -> None:
        with self._lock:
            self._status = status
            self._error = error
            self._request = None
        self._finished.set()


class _Task:
    """A plain function call in the queue (one image of a batch), with its ``Future``."""

    def __init__(self, lane: str, cost_s: float, fn: Callable, args: tuple, kwargs: dict) -> None:
        self.lane = lane
        self.cost_s = cost_s
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.future: Future = Future()


class _QueueExecutor(Executor):
    """``concurrent.futures.Executor`` face of the registry's queue, for one lane."""

    def __init__(self, registry: JobRegistry, lane: str, cost_s: float) -> None:
        self._registry, self._lane, self._cost_s = registry, lane, cost_s

    def submit(self, fn, /, *args, **kwargs) -> Future:
        return self._registry._submit_task(_Task(self._lane, self._cost_s, fn, args, kwargs))


class JobRegistry:
    """The app's queue of fits; identical requests share one job.

    Parameters
    ----------
    store : where finished fits are looked up and saved.
    fit_fn : the fit function, called as ``requests.load_or_fit`` calls it (``fit_fn(image,
        settings, image_sha256=..., progress=..., stop=..., warm_start=...)``, and
        ``appearance_source=`` for a reuse fit); ``droplet_core.inference.engine.run_fit`` when None
        (imported on first use, so importing this module does not load JAX). On a cluster
        it must be importable by the workers.
    max_workers : in-process fits computed at once; more wait in the queue. One suits a
        CPU machine, where a single fit already uses every core. On a cluster, the
        workers' threads decide.
    queue : scheduler address and per-session limit; in-process, default limit when None.
    """

    def __init__(
        self,
        store: FitStore,
        fit_fn: FitFunction | None = None,
        max_workers: int = 1,
        queue: QueueSettings | None = None,
    ) -> None:
        self.store = store
        self.queue_settings = queue or QueueSettings()
        self._fit_fn = fit_fn
        self._max_workers = max_workers
        self._cond = threading.Condition()
        self._jobs: dict[str, FitJob] = {}
        self._queue = FairQueue()
        self._running: dict[FitJob | _Task, float] = {}  # what runs, and since when (monotonic)
        self._seconds_per_step: dict[str, float] = {}
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._client = None
        self._capacity = (0, -float("inf"))  # cluster threads, and when they were counted
        self._remote: dict[FitJob | _Task, object] = {}  # cluster futures of what runs there
        if self.queue_settings.scheduler:
            remove_stale_job_files(store.root)

    # -- requests ---------------------------------------------------------------------

    def submit(
        self,
        image: np.ndarray,
        image_sha256: str,
        settings: FitSettings,
        warm_start: FitResult | None = None,
        session: str | None = None,
    ) -> FitJob:
        """The job for this fit: stored, already queued or running, or newly queued.

        Parameters
        ----------
        image : float32 ``(H, W, 3)`` in [0, 1], as uploaded.
        image_sha256 : sha256 hex of the uploaded bytes.
        settings : the fit settings.
        warm_start : an earlier (stored) fit to continue from.
        session : the asking session's lane in the queue; None for callers outside the
            app (no per-session limit).

        Returns
        -------
        FitJob
            Already done if the store holds this fit; the existing job if the same fit is
            queued or running (and not being stopped); else a new job.

        Raises
        ------
        StoreError
            The store holds this fit but its files cannot be read.
        QueueFull
            ``session`` already has ``session_limit`` fits queued or running.
        """
        key = request_key(image_sha256, settings, warm_start)
        with self._cond:
            existing = self._jobs.get(key)
            if existing is not None and _reusable(existing):
                return existing
            if self.store.has(key):
                job = FitJob.from_result(self.store.load(key))
            else:
                if session is not None:
                    self._check_session_limit(session)
                job = FitJob(key, settings, lane=session or "")
                job._request = (image, image_sha256, warm_start)
                job._place = self._place_of
                job._on_stop = self._stop_requested
                self._enqueue(job)
            self._jobs[key] = job
            self._forget_old_finished_jobs()
            return job

    def executor(self, lane: str, settings: FitSettings) -> Executor:
        """An ``Executor`` whose calls wait in this queue as ``lane`` (a batch: one lane for
        all its images), each estimated to take as long as a fit with ``settings``."""
        return _QueueExecutor(self, lane, estimated_seconds(settings, self._seconds_per_step))

    def get(self, fit_id: str) -> FitJob | None:
        """The job known under ``fit_id`` (its requested key, or its result's id), if any."""
        with self._cond:
            job = self._jobs.get(fit_id)
            if job is not None:
                return job
            jobs = list(self._jobs.values())
        return next((job for job in jobs if job.snapshot().fit_id == fit_id), None)

    def jobs(self) -> list[FitJob]:
        """The jobs this registry knows, oldest first."""
        with self._cond:
            return list(self._jobs.values())

    def close(self, wait: bool = True) -> None:
        """Stop every unfinished job, drop the queue and let the workers end.

        Running fits end after their current chunk (storing what they reached), queued ones
        without starting; queued batch images are cancelled.
        """
        with self._cond:
            self._closed = True
            threads = list(self._threads)
            self._cond.notify_all()
        self._stop_all()
        if wait:
            for thread in threads:
                if thread is not threading.current_thread():
                    thread.join()

    # -- the queue ----------------------------------------------------------------------

    def _check_session_limit(self, session: str) -> None:
        held = self._queue.queued(session) + sum(
            isinstance(work, FitJob) and work.lane == session for work in self._running
        )
        limit = self.queue_settings.session_limit
        if held >= limit:
            raise QueueFull(
                f"you have {held} fit{'s' if held != 1 else ''} queued or running, the most one "
                f"session may have at once ({limit}); wait for one to finish or stop it"
            )

    def _enqueue(self, work: FitJob | _Task) -> None:
        """Queue ``work`` (lock held) and make sure the workers run."""
        if self._closed:
            raise RuntimeError("the fit queue has been closed")
        self._queue.push(work.lane, work)
        self._start_threads()
        self._cond.notify_all()

    def _submit_task(self, task: _Task) -> Future:
        with self._cond:
            self._enqueue(task)
        return task.future

    def _cost_s(self, work: FitJob | _Task) -> float:
        if isinstance(work, _Task):
            return work.cost_s
        return estimated_seconds(work.settings, self._seconds_per_step)

    def _place_of(self, job: FitJob) -> tuple[int, float] | None:
        """(fits ahead, estimated seconds until it starts) of a queued job; None if not queued."""
        with self._cond:
            if job not in self._queue:
                return None
            remaining = 0.0
            for work, started in self._running.items():
                cost = self._cost_s(work)
                if isinstance(work, FitJob):
                    snap = work.snapshot()
                    remaining += cost * max(0.0, 1.0 - snap.step / max(1, snap.total_steps))
                else:
                    remaining += max(0.0, cost - (time.monotonic() - started))
            ahead = len(self._running)
            for work in self._queue.order():
                if work is job:
                    break
                ahead += 1
                remaining += self._cost_s(work)
            return ahead, remaining / max(1, self._slots())

    def _slots(self) -> int:
        return self._capacity[0] if self.queue_settings.scheduler else self._max_workers

    def _stop_requested(self, job: FitJob) -> None:
        with self._cond:
            if self._queue.remove(job):
                job._finish_without_result(STOPPED, None)
                return
            remote = job in self._remote
        if remote:
            JobFiles(self.store.root, job.token).request_stop()

    def _stop_all(self) -> None:
        with self._cond:
            jobs = list(self._jobs.values())
            tasks = []
            while (work := self._queue.pop()) is not None:
                (tasks if isinstance(work, _Task) else jobs).append(work)
        for job in jobs:
            job.stop()
            if not job.done() and job not in self._running:
                job._finish_without_result(STOPPED, None)
        for task in tasks:
            task.future.cancel()

    def _forget_old_finished_jobs(self) -> None:
        finished = [key for key, job in self._jobs.items() if job.done()]
        for key in finished[: max(0, len(finished) - FINISHED_JOBS_KEPT)]:
            del self._jobs[key]

    def _started(self, work: FitJob | _Task) -> None:
        self._running[work] = time.monotonic()

    def _ended(self, work: FitJob | _Task) -> None:
        """Forget a finished ``work`` (lock held); learn how long a step of its model takes."""
        started = self._running.pop(work, None)
        self._remote.pop(work, None)
        if started is None or not isinstance(work, FitJob) or work.settings.appearance_from is not None:
            return
        snap = work.snapshot()
        if snap.status == DONE and snap.step > 0:
            measured = (time.monotonic() - started) / snap.step
            previous = self._seconds_per_step.get(work.settings.model, measured)
            self._seconds_per_step[work.settings.model] = 0.5 * previous + 0.5 * measured
        self._cond.notify_all()

    # -- workers --------------------------------------------------------------------------

    def _start_threads(self) -> None:
        """Start the workers on first use (lock held), and the watcher that stops the fits
        when the program ends."""
        if self._threads:
            return
        if self.queue_settings.scheduler:
            targets = [self._cluster_loop]
        else:
            targets = [self._local_loop] * self._max_workers
        self._threads = [threading.Thread(target=target, name="droplet-fit", daemon=False) for target in targets]
        self._threads.append(threading.Thread(target=self._watch_main_thread, name="droplet-fit-watch"))
        for thread in self._threads:
            thread.start()

    def _watch_main_thread(self) -> None:
        # The workers are ordinary threads, joined when the program ends, before any
        # ``atexit`` handler (JAX's among them) runs: once the main thread has finished,
        # stop the fits, so that they end after their current chunk and store what they have.
        main = threading.main_thread()
        while main.is_alive():
            main.join(timeout=0.5)
            with self._cond:
                if self._closed:
                    return
        self.close(wait=False)

    def _local_loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not len(self._queue):
                    self._cond.wait()
                work = self._queue.pop()
                if work is None:
                    return
                self._started(work)
            try:
                if isinstance(work, FitJob):
                    self._run_here(work)
                elif work.future.set_running_or_notify_cancel():
                    try:
                        work.future.set_result(work.fn(*work.args, **work.kwargs))
                    except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the future
                        work.future.set_exception(exc)
            finally:
                with self._cond:
                    self._ended(work)

    def _run_here(self, job: FitJob) -> None:
        image, image_sha256, warm_start = job._request
        outcome, result = compute_fit(
            image,
            image_sha256,
            job.settings,
            self.store,
            self._fit_fn,
            progress=job._report,
            stop=job._stop,
            warm_start=warm_start,
        )
        if result is not None:
            job._finish_with(result)
        else:
            job._finish_without_result(outcome.status, outcome.error)

    def _cluster_loop(self) -> None:
        closed_at = None
        try:
            while True:
                with self._cond:
                    if self._closed:
                        # Stopped fits store what they reached within a chunk or two; a lost
                        # cluster never answers, so wait for them only so long.
                        closed_at = closed_at or time.monotonic()
                        if not self._remote or time.monotonic() - closed_at > _CLOSE_WAIT_S:
                            return
                self._follow_cluster_work()
                self._start_on_cluster()
                with self._cond:
                    self._cond.wait(_CLUSTER_POLL_S)
        finally:
            if self._client is not None:
                self._client.close()

    def _connect(self):
        """The Dask client (connected on first use); None, with the queue's fits failed with
        a message, when the scheduler cannot be reached."""
        if self._client is not None:
            return self._client
        from distributed import Client  # lazy: only a lab server needs Dask

        address = self.queue_settings.scheduler
        try:
            self._client = Client(address, timeout="10s", set_as_default=False)
        except (OSError, TimeoutError) as exc:
            message = one_line(f"cannot reach the Dask scheduler at {address}: {exc}")
            with self._cond:
                failed = []
                while (work := self._queue.pop()) is not None:
                    failed.append(work)
            for work in failed:
                if isinstance(work, FitJob):
                    work._finish_without_result(FAILED, message)
                else:
                    work.future.set_exception(RuntimeError(message))
            return None
        return self._client

    def _start_on_cluster(self) -> None:
        with self._cond:
            if self._closed or not len(self._queue):
                return
        client = self._connect()
        if client is None:
            return
        now = time.monotonic()
        if now - self._capacity[1] > _CAPACITY_REFRESH_S:
            self._capacity = (sum(client.nthreads().values()), now)
        while True:
            with self._cond:
                if self._closed or len(self._running) >= self._capacity[0]:
                    return
                work = self._queue.pop()
                if work is None:
                    return
                self._started(work)
            if isinstance(work, FitJob):
                image, image_sha256, warm_start = work._request
                # An uploaded image is in the store, which the workers read: the task then
                # stays small, and a retry on another worker finds its input there too.
                future = client.submit(
                    fit_on_worker,
                    None if self.store.has_image(image_sha256) else image,
                    image_sha256,
                    work.settings,
                    warm_start.fit_id if warm_start is not None else None,
                    str(self.store.root),
                    work.token,
                    self._fit_fn,
                    key=f"droplet-fit-{work.fit_id}-{work.token[:8]}",
                    pure=False,
                )
            elif work.future.set_running_or_notify_cancel():
                future = client.submit(work.fn, *work.args, pure=False, **work.kwargs)
            else:
                with self._cond:
                    self._ended(work)
                continue
            with self._cond:
                self._remote[work] = future

    def _follow_cluster_work(self) -> None:
        """Progress of the fits on the cluster, and the end of those that finished."""
        with self._cond:
            remote = list(self._remote.items())
        for work, future in remote:
            if isinstance(work, FitJob):
                record = JobFiles(self.store.root, work.token).read_progress()
                if record is not None:
                    work._take_progress_record(record)
            if not future.done():
                continue
            try:
                value, error = future.result(), None
            except Exception as exc:  # noqa: BLE001 - a worker's death or a lost cluster, for the user
                value, error = None, exc
            if isinstance(work, FitJob):
                self._finish_cluster_fit(work, value, error)
            elif error is None:
                work.future.set_result(value)
            else:
                work.future.set_exception(RuntimeError(_cluster_failure(error)))
            future.release()
            with self._cond:
                self._ended(work)

    def _finish_cluster_fit(self, job: FitJob, outcome: FitOutcome | None, error: BaseException | None) -> None:
        JobFiles(self.store.root, job.token).remove()
        if error is not None:
            job._finish_without_result(FAILED, _cluster_failure(error))
        elif outcome.fit_id is None:
            job._finish_without_result(outcome.status, outcome.error)
        else:
            try:
                job._finish_with(self.store.load(outcome.fit_id))
            except StoreError as exc:
                job._finish_without_result(FAILED, one_line(f"the worker stored this fit but it cannot be read: {exc}"))


def _cluster_failure(error: BaseException) -> str:
    """One line for the user about a fit the cluster could not finish."""
    from distributed import KilledWorker

    if isinstance(error, KilledWorker):
        return (
            "the Dask worker computing this fit died (out of memory, or shut down) on every try; nothing of it "
            "was stored: press Fit to try again"
        )
    return one_line(f"the Dask cluster could not run this fit: {type(error).__name__}: {error}")


def _reusable(job: FitJob) -> bool:
    """Whether a new request for the same key may share ``job`` instead of starting another."""
    if not job.done():
        # A job being stopped will end partial; the new request wants the whole fit.
        return not job.stop_requested
    return job.snapshot().status == DONE
