"""Start the app's Streamlit server and a headless Chromium the same way everywhere: for
``bench/load.py`` and the real-browser tests (``tests/test_browser*.py``, ``tests/test_lab_browser.py``).

The options are those of Streamlit's own end-to-end suite (headless, no file watcher, no
usage statistics); Chromium is Debian's package, since ``playwright install`` cannot
download browsers here.
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# The app is idle (its script has finished) when Streamlit marks it so.
IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"
EXCEPTION = "[data-testid='stException']"
SERVER_OPTIONS = [
    "--server.headless",
    "true",
    "--global.developmentMode",
    "false",
    "--server.fileWatcherType",
    "none",
    "--browser.gatherUsageStats",
    "false",
]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def streamlit_command(script: str | Path, port: int) -> list[str]:
    """``streamlit run`` arguments (after the program name) for ``script`` on ``port``."""
    return ["run", str(script), "--server.port", str(port), *SERVER_OPTIONS]


def wait_for_health(base: str, proc: subprocess.Popen, log: Path, timeout_s: float) -> None:
    """Wait until the server at ``base`` answers ``/_stcore/health``.

    Raises
    ------
    RuntimeError
        ``proc`` ended, or ``timeout_s`` seconds passed, first; the message ends with the
        tail of the server's ``log``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(base + "/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the app server did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.3)


def stop(proc: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """Terminate ``proc``; kill it if it has not ended after ``timeout_s``."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
