"""Seed-style references for the ``gaussian`` and ``neural`` variants, for benchmarks.

The notebooks fit with no detector: droplets start at uniformly random positions, an
``AutoNormal`` guide is trained by ``Adam(0.01)`` and ``Trace_ELBO`` for a fixed, long
step count, on 2000 droplets. These references do the same with design.md's priors
(gaussian: ``bg ~ U(0, 1)``, ``x, y`` uniform over the image, ``sigma ~ LogNormal(1.5,
0.75)``, ``a ~ HalfNormal(1)``; neural: the same priors on position and radius, a
composition per droplet and ``Normal(0, 1)`` optics weights) and the notebooks' fixed
``Normal(0, 0.05)`` likelihood. Rendering is Droplet's own (patches per droplet;
nearest-droplet MLP for neural), so the comparison measures the fitting strategy, not
the renderer: every droplet gets the same patch, large enough for radii up to
``RADIUS_CAP_PX`` (well above the example's droplets, 1 to 4 px at downscale 4).

Starting values: positions uniform over the image, radii uniform in ``START_RADIUS_PX``,
amplitudes uniform in ``START_AMPLITUDE``, background at the channel's median, optics
weights as Droplet initialises them. Random-value starts for amplitude and weights
(AutoNormal's default) saturate the clipped image and would make the reference a
strawman.

Steps run in jitted ``lax.scan`` chunks (``bench.seed_reference``'s runner); RMSE of the
guide-median reconstruction is recorded after each chunk, outside the timing.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.contrib.module import random_flax_module
from numpyro.handlers import seed, substitute, trace
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal
from numpyro.infer.initialization import init_to_value
from numpyro.optim import Adam

from bench.seed_reference import rmse, run_in_chunks
from droplet_core.imaging.images import load_image
from droplet_core.inference.engine import prepare_channel
from droplet_core.models import gaussian, neural
from droplet_core.models.common import GROWTH_ROOM, ModelSpec, make_layout
from droplet_core.settings import FitSettings

SEED_DROPLETS = 2000
SEED_DOWNSCALE = 4
SEED_NOISE = 0.05
SEED_LEARNING_RATE = 0.01
START_RADIUS_PX = (1.0, 4.0)
START_AMPLITUDE = (0.05, 0.5)
# Largest radius a patch can draw (Gaussian sigma for gaussian); an entry of RADIUS_CAPS_PX.
RADIUS_CAP_PX = {"gaussian": 4.0, "neural": 6.5}
SETTINGS = {
    "gaussian": FitSettings(model="gaussian", channel="h", downscale=SEED_DOWNSCALE),
    "neural": FitSettings(model="neural", channel="rgb", downscale=SEED_DOWNSCALE),
}


def gaussian_model(observed, spec: ModelSpec):
    """Gaussian blobs with uniform position priors on an ``(h, w, 1)`` channel."""
    layout = spec.layout
    bg = numpyro.sample("bg", dist.Uniform(0.0, 1.0).expand([layout.channels]).to_event(1))
    with numpyro.plate("droplets", layout.n_droplets):
        x = numpyro.sample("x", dist.Uniform(0.0, layout.width))
        y = numpyro.sample("y", dist.Uniform(0.0, layout.height))
        sigma = numpyro.sample("sigma", dist.LogNormal(1.5, 0.75))
        amplitude = numpyro.sample("amplitude", dist.HalfNormal(1.0))
    image = numpyro.deterministic("reconstruction", gaussian.render(bg, x, y, sigma, amplitude, spec))
    numpyro.sample("obs", dist.Normal(image, SEED_NOISE).to_event(3), obs=observed)


def neural_model(observed, spec: ModelSpec):
    """Nearest-droplet optics MLP with uniform position priors on an ``(h, w, c)`` image."""
    layout = spec.layout
    c = layout.channels
    bg = numpyro.sample("bg", dist.Uniform(0.0, 1.0).expand([c]).to_event(1))
    with numpyro.plate("droplets", layout.n_droplets):
        x = numpyro.sample("x", dist.Uniform(0.0, layout.width))
        y = numpyro.sample("y", dist.Uniform(0.0, layout.height))
        radius = numpyro.sample("radius", dist.LogNormal(1.5, 0.75))
        composition = numpyro.sample("composition", dist.Uniform(0.0, 1.0).expand([spec.mask_types]).to_event(1))
    optics = random_flax_module(
        "optics", neural.DropletOptics(channels=c), dist.Normal(0.0, 1.0), input_shape=(1, neural.feature_count(spec))
    )
    active = jnp.ones(layout.n_droplets)
    features, covered = neural.nearest_droplet_features(x, y, radius, composition, active, spec)
    background = jnp.broadcast_to(bg, (features.shape[0], c))
    rendered = optics(jnp.concatenate([background, features], axis=-1))
    image = jnp.where(covered[:, None] > 0, rendered, background).reshape(layout.height, layout.width, c)
    numpyro.deterministic("reconstruction", image)
    numpyro.sample("obs", dist.Normal(image, SEED_NOISE).to_event(3), obs=observed)


MODELS = {"gaussian": (gaussian, gaussian_model), "neural": (neural, neural_model)}


def setup(name: str, observed: np.ndarray, seed_value: int) -> tuple:
    """The seed-style model and its starting values for an ``(h, w, c)`` image.

    ``seed_value`` seeds the random starting values.

    Returns
    -------
    ``(model, init_values)``: ``model(observed)`` and constrained starting values by site.
    """
    variant, seed_model = MODELS[name]
    height, width, _ = observed.shape
    layout = make_layout(observed.shape, np.full(SEED_DROPLETS, RADIUS_CAP_PX[name] / GROWTH_ROOM), variant.EXTENT)
    settings = SETTINGS[name]
    spec = ModelSpec(layout, 1.0, settings.mask_types, settings.mask_size)
    rng = np.random.default_rng(seed_value)
    # The variants' own initialisers take detector candidates x, y, radius, contrast: random ones here.
    candidates = np.stack(
        [
            rng.uniform(0.0, width, SEED_DROPLETS),
            rng.uniform(0.0, height, SEED_DROPLETS),
            rng.uniform(*START_RADIUS_PX, SEED_DROPLETS),
            rng.uniform(*START_AMPLITUDE, SEED_DROPLETS),
        ],
        axis=1,
    ).astype(np.float32)
    # Random candidates say nothing of where the background is: it starts at the median pixel.
    background = np.median(observed, axis=(0, 1))
    init_values = variant.initial_values(observed, candidates, background, spec, jax.random.PRNGKey(seed_value))
    return (lambda observed: seed_model(observed, spec)), init_values


def run(name: str, path: str, steps: int, chunk: int = 500, progress=None) -> dict:
    """Fit the seed-style ``name`` model (``"gaussian"`` or ``"neural"``) to ``path``.

    Parameters
    ----------
    name : model name.
    path : image file.
    steps : SVI steps.
    chunk : steps per jitted call; RMSE is recorded after every chunk.
    progress : optional callable ``(step, seconds, rmse)`` called after every chunk.

    Returns
    -------
    dict like ``bench.seed_reference.run``: ``steps``, ``seconds`` (SVI steps only),
    ``steps_per_s``, ``rmse_by_step`` (mean over channels, step 0 included),
    ``seconds_by_step``, ``init_s``, ``compile_s``, ``shape``.
    """
    observed, _, _ = prepare_channel(load_image(path), SETTINGS[name])
    model, init_values = setup(name, observed, 0)
    guide = AutoNormal(model, init_loc_fn=init_to_value(values=init_values))
    svi = SVI(model, guide, Adam(SEED_LEARNING_RATE), Trace_ELBO())
    args = (jnp.asarray(observed),)
    start = time.perf_counter()
    state = svi.init(jax.random.PRNGKey(0), *args)
    init_s = time.perf_counter() - start

    @jax.jit
    def render(params):
        conditioned = seed(substitute(model, data=guide.median(params)), 0)
        return trace(conditioned).get_trace(*args)["reconstruction"]["value"]

    def error(state) -> float:
        # Mean over channels of the per-channel RMSE, as Droplet reports it per channel.
        image = np.asarray(render(svi.get_params(state)))
        return float(np.mean([rmse(observed[..., c], image[..., c]) for c in range(observed.shape[2])]))

    record = run_in_chunks(svi, args, state, steps, chunk, error, progress)
    return {**record, "init_s": init_s, "shape": observed.shape}


def convergence(rmse_by_step: dict[int, float], tolerance: float = 0.01, window: float = 0.2) -> int | None:
    """The first recorded step at which RMSE has plateaued, or None within the run.

    A step ``s`` is on the plateau when RMSE changed by less than ``tolerance``
    (relative) over the last ``window`` of the steps up to ``s``, i.e. since the latest
    recorded step at or before ``(1 - window) * s``.
    """
    steps = sorted(rmse_by_step)
    for s in steps[1:]:
        earlier = max(t for t in steps if t <= (1.0 - window) * s)
        if abs(rmse_by_step[earlier] - rmse_by_step[s]) < tolerance * rmse_by_step[s]:
            return s
    return None
