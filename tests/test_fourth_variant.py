"""A fourth model variant, added in this file alone: uniform disks with a soft edge.

It implements ``droplet_core.models.Variant`` and is registered with
``droplet_core.variants.register_variant``; nothing else in ``droplet_core`` knows it. The
test fits a synthetic scene of uniform disks with it through the command line (which runs
the normal engine and saves to the store) and then asks the store-or-fit route for the
same request, which must be served from the store.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pandas as pd
import pytest

from droplet_core import variants
from droplet_core.detection.matching import match_droplets
from droplet_core.imaging.images import encode_png, load_image, sha256_bytes
from droplet_core.models.common import (
    ModelSpec,
    capped_radius,
    initial_background,
    patch_geometry,
    per_pixel,
    sample_background,
    splat,
    uncertainty_columns,
)
from droplet_core.service.cli import main
from droplet_core.service.requests import load_or_fit
from droplet_core.service.store import FitStore
from droplet_core.settings import FitSettings

pytestmark = pytest.mark.slow  # fits a scene with the fourth variant

# -- the variant (everything a variant module needs) ------------------------------------------

EXTENT = 1.5
EDGE_WIDTH_PX = 0.5
POSITION_PRIOR_SD_PX = 3.0


def model(observed, anchors, active, spec: ModelSpec):
    """Uniform disks of amplitude ``a`` on the background, edges softened over ``EDGE_WIDTH_PX``."""
    layout = spec.layout
    _, background = sample_background(layout)
    noise = numpyro.sample("noise", dist.LogNormal(jnp.log(0.05), 1.0))
    with numpyro.plate("droplets", layout.n_droplets):
        x = numpyro.sample("x", dist.Normal(anchors[:, 0], POSITION_PRIOR_SD_PX))
        y = numpyro.sample("y", dist.Normal(anchors[:, 1], POSITION_PRIOR_SD_PX))
        radius = numpyro.sample("radius", dist.LogNormal(1.5, 0.75))
        amplitude = numpyro.sample("amplitude", dist.HalfNormal(1.0))
    flat, dx, dy, inside = patch_geometry(layout, x, y)
    cover = jax.nn.sigmoid((capped_radius(layout, radius) - jnp.hypot(dx, dy)) / EDGE_WIDTH_PX)
    disks = splat(layout, (per_pixel(layout, amplitude * active) * cover)[:, None], flat, inside)
    image = jnp.clip(background + spec.polarity * disks.reshape(layout.height, layout.width, 1), 0.0, 1.0)
    numpyro.deterministic("reconstruction", image)
    numpyro.deterministic("strength", amplitude)
    numpyro.sample("obs", dist.Normal(image, noise).to_event(3), obs=observed)


def initial_values(observed, candidates, background, spec: ModelSpec, key, appearance=None) -> dict:
    del spec, key, appearance
    return {
        **initial_background(background, observed.shape[2]),
        "noise": np.float32(0.05),
        "x": candidates[:, 0].astype(np.float32),
        "y": candidates[:, 1].astype(np.float32),
        "radius": candidates[:, 2].astype(np.float32),
        "amplitude": np.maximum(np.abs(candidates[:, 3]), 1e-3).astype(np.float32),
    }


def added_droplet_values(peaks, values, active) -> dict:
    del values, active
    return {"radius": np.maximum(peaks[:, 2], 0.5), "amplitude": np.maximum(np.abs(peaks[:, 3]), 1e-3)}


def radius_px(values: dict) -> np.ndarray:
    return values["radius"]


def drawn_radius_px(values: dict) -> np.ndarray:
    return values["radius"]


def droplet_columns(values: dict, uncertainty: dict, spec: ModelSpec) -> dict:
    del spec
    return {
        "x": values["x"],
        "y": values["y"],
        "radius": values["radius"],
        "amplitude": values["amplitude"],
        **uncertainty_columns(uncertainty),
    }


def is_appearance_site(name: str) -> bool:
    del name
    return False


def appearance(values: dict, spec: ModelSpec) -> dict:
    del values, spec
    return {}


# -- the test ---------------------------------------------------------------------------------


def disk_scene(seed: int = 0) -> tuple[bytes, pd.DataFrame]:
    """PNG bytes of 12 bright uniform disks (radius 3.5-6 px) on a dark 112 x 112 field, and their truth."""
    rng = np.random.default_rng(seed)
    centres = [(x, y) for x in range(14, 112, 28) for y in range(18, 112, 36)]
    truth = pd.DataFrame(
        {
            "x": [x + rng.uniform(-3, 3) for x, _ in centres],
            "y": [y + rng.uniform(-3, 3) for _, y in centres],
            "radius": rng.uniform(3.5, 6.0, len(centres)),
        }
    )
    rows, cols = np.mgrid[:112, :112]
    grey = np.full((112, 112), 0.15)
    for x, y, r in truth.itertuples(index=False):
        grey[np.hypot(cols - x, rows - y) <= r] = 0.75
    grey += rng.normal(0.0, 0.02, grey.shape)
    rgb = np.repeat(np.clip(np.round(grey * 255), 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    return encode_png(rgb), truth


@pytest.fixture()
def disk_variant(monkeypatch):
    # Registered for this test only: other tests see the built-in variants.
    monkeypatch.setattr(variants, "_REGISTRY", dict(variants._REGISTRY))
    variants.register_variant("disk", __name__)
    return "disk"


def test_a_variant_in_its_own_file_fits_through_the_engine_store_and_cli(disk_variant, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DROPLET_STORE", str(tmp_path / "store"))
    assert disk_variant in variants.variant_names()
    data, truth = disk_scene()
    (tmp_path / "disks.png").write_bytes(data)

    status = main(
        [
            "fit",
            str(tmp_path / "disks.png"),
            "--model",
            "disk",
            "--channel",
            "grey",
            "--downscale",
            "1",
            "--steps",
            "300",
            "--out",
            str(tmp_path / "out"),
            "--quiet",
        ]
    )
    assert status == 0, capsys.readouterr().err
    droplets = pd.read_csv(tmp_path / "out" / "droplets.csv")
    assert {"x", "y", "radius", "amplitude", "sd_x", "p_exists"} <= set(droplets.columns)
    likely = droplets[droplets["p_exists"] >= 0.5]
    score = match_droplets(truth, likely)
    assert score.f1 == 1.0 and score.median_radius_error < 0.1, score
    matched = pd.merge_asof(
        truth.sort_values("x"), likely.sort_values("x"), on="x", direction="nearest", suffixes=("_true", "_fit")
    )
    assert np.abs(matched["radius_fit"] - matched["radius_true"]).max() < 0.6
    assert np.abs(likely["amplitude"] - 0.6).max() < 0.1

    settings = FitSettings(model="disk", channel="grey", downscale=1, steps=300)
    served = load_or_fit(load_image(data), sha256_bytes(data), settings, FitStore())
    assert served.from_store
    assert served.result.settings.model == "disk" and len(served.result.droplets) == len(droplets)
