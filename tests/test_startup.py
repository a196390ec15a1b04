"""The app starts without JAX: no page, nor anything the pages share, loads JAX, numpyro or
flax when it is imported; the first fit or detection does (``bench/startup.py`` times it).

Each check runs in a fresh interpreter, since this test process has long loaded JAX.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("jax", "numpyro", "flax")
SCRIPTS = [REPO / "app.py", *sorted((REPO / "app_support").glob("*.py")), *sorted((REPO / "pages").glob("*.py"))]

# For each script in turn: run its top-level import statements, then name the heavy
# modules loaded so far (so the first script that loads one is the culprit).
IMPORTS_PROBE = """
import json, sys
heavy, scripts = json.loads(sys.argv[1]), json.loads(sys.argv[2])
loaded = {}
for name, source in scripts:
    exec(compile(source, name, "exec"), {})
    loaded[name] = [m for m in heavy if m in sys.modules]
print(json.dumps(loaded))
"""

# A new session on the first page (the script run twice, as a browser's first visit is).
FIRST_PAGE_PROBE = """
import json, sys
from streamlit.testing.v1 import AppTest
heavy, entry = json.loads(sys.argv[1]), sys.argv[2]
at = AppTest.from_file(entry, default_timeout=120)
at.run()
at.run()
print(json.dumps({"exceptions": [str(e.value) for e in at.exception],
                  "subheaders": [str(s.value) for s in at.subheader],
                  "heavy": [m for m in heavy if m in sys.modules]}))
"""


def top_level_imports(script: Path) -> str:
    tree = ast.parse(script.read_text())
    return "\n".join(ast.unparse(node) for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom)))


def run_fresh(code: str, *args: str) -> dict:
    """Run ``code`` in a fresh interpreter with ``HEAVY`` and ``args`` as arguments; its last JSON line."""
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(HEAVY), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_no_page_import_loads_jax():
    scripts = [(str(s.relative_to(REPO)), top_level_imports(s)) for s in SCRIPTS]
    loaded = run_fresh(IMPORTS_PROBE, json.dumps(scripts))
    assert list(loaded) == [name for name, _ in scripts]
    assert {name: heavy for name, heavy in loaded.items() if heavy} == {}


@pytest.mark.slow
def test_first_page_opens_without_jax():
    shown = run_fresh(FIRST_PAGE_PROBE, str(REPO / "app.py"))
    assert shown["exceptions"] == []
    assert shown["subheaders"], "the Image page drew nothing"
    assert shown["heavy"] == []
