"""Server-side time of every script run, per page, for load benchmarks (``bench.load``).

Off unless ``DROPLET_RUN_TIMES`` names a file: then each run of a page appends one line,
``<page title>\\t<wall seconds>\\t<CPU seconds>``, measured around the page's code in this
server process (whatever the browsers cost is not in it). The wall time includes waiting:
for another session building the same figure, and for cores the browsers or workers hold
on a shared machine. The CPU time is what the run itself computed (its script thread's),
the server's own cost whatever else runs beside it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

RUN_TIMES_ENV_VAR = "DROPLET_RUN_TIMES"


@contextmanager
def timed_run(page: str) -> Iterator[None]:
    """Time the enclosed script run of ``page`` (also when it ends by ``st.stop`` or a rerun)."""
    path = os.environ.get(RUN_TIMES_ENV_VAR)
    started, started_cpu = time.perf_counter(), time.thread_time()
    try:
        yield
    finally:
        if path:
            with open(path, "a") as log:
                log.write(f"{page}\t{time.perf_counter() - started:.4f}\t{time.thread_time() - started_cpu:.4f}\n")
