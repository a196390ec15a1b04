"""Server-side time of one script run per page, for one session, without browsers.

Run from the repository root::

    python -m bench.page_runs                      # the built-in demo scene
    python -m bench.page_runs --image ../shared/data/example.jpg --runs 5 --store /tmp/page-runs

Stores the image in a temporary store and fits it once (``load_or_fit``, a short fit, so
that the result pages have a fit to show), then drives one session with Streamlit's AppTest
through every page but Fit: the first run of a page (what a user waits for when opening
it, caches cold for this fit) and ``--runs`` reruns (what every click, slider move or
share-link open of another session costs once the caches hold this fit). Prints, per page,
the first run and the median / 95th percentile / max of the reruns, in seconds of this
process (AppTest's own handling of the page's elements included, no browser). With
``--store``, the fits are kept there and found again by the next run (before / after a change).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = ("image", "results", "gallery", "compare", "batch", "timelapse")


def percentile_95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[-1] if len(values) > 1 else values[0]


def fit_once(image_bytes: bytes, steps: int) -> tuple[str, list[str], float]:
    """Store the image and two short fits of it (Compare needs two); their image sha, fit
    ids, and the seconds fitting took."""
    from droplet_core.imaging.images import load_image
    from droplet_core.service.requests import load_or_fit
    from droplet_core.service.store import FitStore, default_store_root
    from droplet_core.settings import FitSettings

    store = FitStore(default_store_root())
    sha = store.save_image(image_bytes)
    image = load_image(image_bytes)
    started = time.perf_counter()
    fit_ids = [
        load_or_fit(image, sha, FitSettings(steps=steps, seed=seed), store, image_bytes=image_bytes).result.fit_id
        for seed in (0, 1)
    ]
    return sha, fit_ids, time.perf_counter() - started


def measure(sha: str, name: str, fit_ids: list[str], runs: int) -> dict[str, list[float]]:
    """Seconds of every run of each page: the first, then ``runs`` reruns."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.run()
    at.run()
    at.session_state["image_sha"] = sha
    at.session_state["image_name"] = name
    at.session_state["fit_history"] = list(fit_ids)
    at.session_state["fit_id"] = fit_ids[0]
    times: dict[str, list[float]] = {}
    for page in PAGES:
        at.switch_page(f"pages/{page}.py")
        if page == "compare":
            at.query_params["fits"] = ",".join(fit_ids)
        for _ in range(runs + 1):
            started = time.perf_counter()
            at.run()
            times.setdefault(page, []).append(time.perf_counter() - started)
        if at.exception:
            raise AssertionError(f"{page}: {at.exception[0].value}")
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.page_runs", description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, help="an image file (default: the built-in demo scene)")
    parser.add_argument("--runs", type=int, default=5, help="reruns per page after its first run (default 5)")
    parser.add_argument("--steps", type=int, default=150, help="steps of the short fits (default 150)")
    parser.add_argument("--store", type=Path, help="keep the fits in this folder (default: a temporary one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="droplet-page-runs-") as temporary:
        os.environ["DROPLET_STORE"] = str(args.store or temporary)
        if args.image is None:
            from droplet_core.synthetic.scenes import demo_image_bytes

            data, name = demo_image_bytes(), "demo scene (built in)"
        else:
            data, name = args.image.read_bytes(), args.image.name
        sha, fit_ids, fit_s = fit_once(data, args.steps)
        print(f"image {name}; its two fits of {args.steps} steps took {fit_s:.1f} s (not counted below)")
        times = measure(sha, name, fit_ids, args.runs)
    print(f"{'page':<12}{'first s':>9}{'reruns':>8}{'median s':>10}{'p95 s':>8}{'max s':>8}")
    reruns_all = []
    for page, values in times.items():
        first, reruns = values[0], values[1:]
        reruns_all += reruns
        print(
            f"{page:<12}{first:>9.3f}{len(reruns):>8}{statistics.median(reruns):>10.3f}"
            f"{percentile_95(reruns):>8.3f}{max(reruns):>8.3f}"
        )
    print(
        f"{'all reruns':<12}{'':>9}{len(reruns_all):>8}{statistics.median(reruns_all):>10.3f}"
        f"{percentile_95(reruns_all):>8.3f}{max(reruns_all):>8.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
