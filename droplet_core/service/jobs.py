"""Background fits shared by all app sessions: one registry, one worker pool, one job per fit key.

The app keeps a single ``JobRegistry`` (in ``st.cache_resource``). Sessions submit fits
and poll ``FitJob.snapshot()``; two sessions asking for the same fit (same image,
settings and warm start) share one job and one computation, and a fit already in the
store is served from it without computing. Workers never call Streamlit.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from droplet_core.fit_ids import fit_key
from droplet_core.results import FitResult
from droplet_core.service.store import FitStore, StoreError
from droplet_core.settings import FitProgress, FitSettings

logger = logging.getLogger(__name__)

# Finished jobs stay reachable through ``JobRegistry.get`` for a while; each holds a whole
# FitResult (images and parameters), so only the most recent ones are kept in memory.
# Stored fits remain available from the FitStore.
FINISHED_JOBS_KEPT = 16

RUNNING, DONE, STOPPED, FAILED = "running", "done", "stopped", "failed"

FitFunction = Callable[..., FitResult]


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

    @property
    def finished(self) -> bool:
        return self.status != RUNNING


class FitJob:
    """One fit, queued, running or finished; created by ``JobRegistry``.

    Its state is written by the worker thread (through the progress callback) and read by
    any number of session threads; a lock keeps each snapshot consistent.
    """

    def __init__(self, fit_id: str, settings: FitSettings) -> None:
        self.fit_id = fit_id
        self.settings = settings
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

    @classmethod
    def from_result(cls, result: FitResult) -> FitJob:
        """An already finished job wrapping a stored ``result``."""
        job = cls(result.fit_id, result.settings)
        job._finish_with(result)
        return job

    def stop(self) -> None:
        """Ask the fit to stop after its current chunk; it then finishes as ``"stopped"``."""
        self._stop.set()

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
            )

    # -- called by the worker ---------------------------------------------------------

    def _report(self, progress: FitProgress) -> None:
        """Progress callback handed to the fit function."""
        loss = float(progress.loss)
        with self._lock:
            self._step = int(progress.step)
            self._loss = loss
            self._elapsed_s = float(progress.elapsed_s)
            self._droplets = int(progress.droplets)
            self._losses.append(loss)

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
        self._finished.set()

    def _finish_without_result(self, status: str, error: str | None) -> None:
        with self._lock:
            self._status = status
            self._error = error
        self._finished.set()


class JobRegistry:
    """Runs fits in background threads; identical requests share one job.

    Parameters
    ----------
    store : where finished fits are looked up and saved.
    fit_fn : the fit function, called as ``fit_fn(image, settings, image_sha256=...,
        progress=..., stop=..., warm_start=...)``; ``droplet_core.inference.engine.run_fit`` when None
        (imported on first use, so importing this module does not load JAX).
    max_workers : fits computed at once; more wait in a queue. One suits a CPU machine,
        where a single fit already uses every core.
    """

    def __init__(self, store: FitStore, fit_fn: FitFunction | None = None, max_workers: int = 1) -> None:
        self.store = store
        self._fit_fn = fit_fn
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="droplet-fit")
        self._lock = threading.Lock()
        self._jobs: dict[str, FitJob] = {}
        # The pool's threads are joined at interpreter exit, before ``atexit`` handlers run,
        # so a long fit would hold up shutting the app down: stop the fits first (they end
        # after their current chunk and store what they have). Same hook concurrent.futures
        # uses; ours is registered later, so it runs before the pool joins its threads.
        threading._register_atexit(_stop_jobs_at_exit, weakref.ref(self))

    def submit(
        self,
        image: np.ndarray,
        image_sha256: str,
        settings: FitSettings,
        warm_start: FitResult | None = None,
    ) -> FitJob:
        """The job for this fit: stored, already in progress, or newly started.

        Parameters
        ----------
        image : float32 ``(H, W, 3)`` in [0, 1], as uploaded.
        image_sha256 : sha256 hex of the uploaded bytes.
        settings : the fit settings.
        warm_start : an earlier fit to continue from.

        Returns
        -------
        FitJob
            Already done if the store holds this fit; the existing job if the same fit is
            queued or running (and not being stopped); else a new job.

        Raises
        ------
        StoreError
            The store holds this fit but its files cannot be read.
        """
        parent_fit_id = warm_start.fit_id if warm_start is not None else None
        key = fit_key(image_sha256, settings, parent_fit_id)
        with self._lock:
            existing = self._jobs.get(key)
            if existing is not None and _reusable(existing):
                return existing
            if self.store.has(key):
                job = FitJob.from_result(self.store.load(key))
            else:
                job = FitJob(key, settings)
                self._executor.submit(self._run, job, image, image_sha256, warm_start)
            self._jobs[key] = job
            self._forget_old_finished_jobs()
            return job

    def get(self, fit_id: str) -> FitJob | None:
        """The job known under ``fit_id`` (its requested key, or its result's id), if any."""
        with self._lock:
            job = self._jobs.get(fit_id)
            if job is not None:
                return job
            for job in self._jobs.values():
                if job.snapshot().fit_id == fit_id:
                    return job
            return None

    def jobs(self) -> list[FitJob]:
        """The jobs this registry knows, oldest first."""
        with self._lock:
            return list(self._jobs.values())

    def close(self, wait: bool = True) -> None:
        """Stop every unfinished job and shut the worker pool down.

        Running fits end after their current chunk, queued ones without starting.
        """
        self._stop_all()
        self._executor.shutdown(wait=wait)

    def _stop_all(self) -> None:
        with self._lock:
            for job in self._jobs.values():
                job.stop()

    def _forget_old_finished_jobs(self) -> None:
        finished = [key for key, job in self._jobs.items() if job.done()]
        for key in finished[: max(0, len(finished) - FINISHED_JOBS_KEPT)]:
            del self._jobs[key]

    def _run(self, job: FitJob, image: np.ndarray, image_sha256: str, warm_start: FitResult | None) -> None:
        """Worker body: compute, store and record the fit; any exception finishes the job as failed."""
        try:
            if job.stop_requested:
                # Stopped while queued: a zero-step fit is not worth computing or storing.
                job._finish_without_result(STOPPED, None)
                return
            if self.store.has(job.fit_id):
                # Another process stored this fit while the job was queued.
                job._finish_with(self.store.load(job.fit_id))
                return
            fit_fn = self._fit_fn or _default_fit_fn()
            try:
                reused = {}
                if job.settings.appearance_from is not None:
                    reused["appearance_source"] = self.store.load(job.settings.appearance_from)
                result = fit_fn(
                    image,
                    job.settings,
                    image_sha256=image_sha256,
                    progress=job._report,
                    stop=job._stop,
                    warm_start=warm_start,
                    **reused,
                )
            except (ValueError, StoreError) as exc:  # FitError, bad settings, a missing source: a message for the user
                job._finish_without_result(FAILED, _one_line(str(exc)) or type(exc).__name__)
                return
            if result.status == DONE and result.fit_id != job.fit_id:
                # The store would file it where no later request looks: a key bug, not a fit.
                raise RuntimeError(f"fit returned id {result.fit_id}, expected {job.fit_id}")
            self.store.save(result)
            job._finish_with(result)
        except Exception as exc:
            logger.exception("fit %s failed", job.fit_id)
            job._finish_without_result(FAILED, _one_line(f"fit failed: {type(exc).__name__}: {exc}"))


def _reusable(job: FitJob) -> bool:
    """Whether a new request for the same key may share ``job`` instead of starting another."""
    if not job.done():
        # A job being stopped will end partial; the new request wants the whole fit.
        return not job.stop_requested
    return job.snapshot().status == DONE


def _stop_jobs_at_exit(registry_ref: weakref.ref) -> None:
    registry = registry_ref()
    if registry is not None:
        registry._stop_all()


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _default_fit_fn() -> FitFunction:
    from droplet_core.inference.engine import run_fit  # lazy: the fit engine loads JAX

    return run_fit
