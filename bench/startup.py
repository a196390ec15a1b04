"""How long the app takes to start, and whether starting it loads JAX.

Run from the repository root::

    python -m bench.startup [--repeats 3]

Every figure comes from a fresh Python interpreter (a subprocess), as a new server
process or a restarted app would be:

- ``imports``: the time to run a page's top-level imports (each page file's own
  ``import`` statements, and those of ``app.py``), and which of JAX, numpyro and flax
  they load. A page should load none of them: JAX starts with the first fit, detection
  or figure that needs it.
- ``first run``: the time from a new interpreter to a page drawn by Streamlit's
  ``AppTest`` on the built-in demo image (the app's script run twice, as a browser's first
  visit is, then the page), and whether JAX was loaded by then.

The median of ``--repeats`` runs is printed (the machine's other load moves single runs).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY_MODULES = ("jax", "numpyro", "flax")
ENTRY = "app.py"
PAGES = ("image", "fit", "results", "gallery", "compare", "batch")


def top_level_imports(script: Path) -> str:
    """The ``import`` statements at the top level of ``script``, as source."""
    tree = ast.parse(script.read_text())
    return "\n".join(ast.unparse(node) for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom)))


# Arguments: the heavy modules (JSON), then the imports' source.
IMPORT_PROBE = """
import json, sys, time
started = time.perf_counter()
exec(compile(sys.argv[2], "<imports>", "exec"))
print(json.dumps({"seconds": time.perf_counter() - started,
                  "heavy": [m for m in json.loads(sys.argv[1]) if m in sys.modules]}))
"""

# Arguments: the heavy modules (JSON), the page's url path, the entry script.
FIRST_RUN_PROBE = """
import json, sys, time
started = time.perf_counter()
from streamlit.testing.v1 import AppTest
at = AppTest.from_file(sys.argv[3], default_timeout=300)
at.run()
at.run()
page = sys.argv[2]
if page != "image":
    at.switch_page(f"pages/{page}.py")
    at.run()
assert not at.exception, [e.value for e in at.exception]
print(json.dumps({"seconds": time.perf_counter() - started,
                  "heavy": [m for m in json.loads(sys.argv[1]) if m in sys.modules]}))
"""


def probe(code: str, argument: str, store: str) -> dict:
    """Run ``code`` in a fresh interpreter at the repository root; its last JSON line."""
    env = {**os.environ, "DROPLET_STORE": store, "PYTHONPATH": str(REPO)}
    arguments = [json.dumps(HEAVY_MODULES), argument, str(REPO / ENTRY)]
    done = subprocess.run(
        [sys.executable, "-c", code, *arguments], cwd=REPO, env=env, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(code: str, argument: str, repeats: int, store: str) -> tuple[float, list[str]]:
    """Median seconds of ``repeats`` fresh runs, and the heavy modules loaded (last run)."""
    runs = [probe(code, argument, store) for _ in range(repeats)]
    return statistics.median(r["seconds"] for r in runs), runs[-1]["heavy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    scripts = {"app.py": REPO / ENTRY, **{page: REPO / "pages" / f"{page}.py" for page in PAGES}}
    print(f"{'page':<10} {'imports s':>10}  {'loads':<22} {'first run s':>12}  loads")
    with tempfile.TemporaryDirectory() as store:
        for name, script in scripts.items():
            import_s, import_heavy = measure(IMPORT_PROBE, top_level_imports(script), args.repeats, store)
            if name == "app.py":
                print(f"{name:<10} {import_s:>10.2f}  {', '.join(import_heavy) or '-':<22}")
                continue
            run_s, run_heavy = measure(FIRST_RUN_PROBE, name, args.repeats, store)
            print(
                f"{name:<10} {import_s:>10.2f}  {', '.join(import_heavy) or '-':<22} {run_s:>12.2f}  "
                f"{', '.join(run_heavy) or '-'}"
            )


if __name__ == "__main__":
    main()
