"""Fake fit functions for tests on a Dask cluster (workers import them by module name)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from test_jobs import build_result

from droplet_core.settings import FitProgress

CHUNK = 10
CHUNK_S = 0.2


def slow_fit(image, settings, *, image_sha256, progress=None, stop=None, warm_start=None):
    """``settings.steps`` in chunks of CHUNK steps, CHUNK_S seconds each; honours ``stop``.

    Appends its process id to ``$DROPLET_STORE/../fit-pids`` when it starts, so a test can
    kill the worker running it and count the tries.
    """
    with open(Path(os.environ["DROPLET_TEST_PIDS"]), "a") as pids:
        pids.write(f"{os.getpid()}\n")
    parent = warm_start.fit_id if warm_start is not None else None
    step = 0
    while step < settings.steps:
        if stop is not None and stop.is_set():
            return build_result(settings, image_sha256, step, parent, "stopped", warm_start)
        time.sleep(CHUNK_S)
        step = min(step + CHUNK, settings.steps)
        progress(
            FitProgress(
                step=step, total_steps=settings.steps, loss=100.0 / step, elapsed_s=step * CHUNK_S / CHUNK, droplets=2
            )
        )
    return build_result(settings, image_sha256, step, parent, "done", warm_start)
