"""The seed notebook's part-2 fit (learned masks), reproduced faithfully for benchmarks.

The model below is the seed's code verbatim (Uniform priors, 10 types of 15x15 masks,
scatter-add bilinear rendering, clip, Normal(0.05) likelihood), fitted as the seed does
with AutoNormal, Adam(0.01), Trace_ELBO and PRNGKey(0) on 2000 droplets of the hue
channel of the image downscaled 4x with Pillow. The only departure is how the steps are
driven: instead of ``svi.run`` we run jitted ``lax.scan`` chunks of ``svi.update`` (the
same update, in the same order) so that time and reconstruction RMSE can be recorded
at checkpoints without timing compilation or evaluation.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from numpyro import deterministic, plate, sample
from numpyro.handlers import seed, substitute, trace
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal
from numpyro.optim import Adam
from PIL import Image

SEED_DROPLETS = 2000
SEED_DOWNSCALE = 4


def model(w, h, n_droplets, channel, types=10, mask_shape=(15, 15)):
    # Sample droplet locations and sizes
    with plate("droplets", n_droplets):
        x = sample("x", dist.Uniform(0, 1)) * (w - mask_shape[1] - 1)
        y = sample("y", dist.Uniform(0, 1)) * (h - mask_shape[0] - 1)
        with plate("types", types):
            composition = sample("composition", dist.Uniform(0, 1))
    mask = sample("mask", dist.Uniform(0, 1).expand((types, *mask_shape)))

    # Instead of round, use floor and linear interpolation
    x_floor = jnp.floor(x)
    y_floor = jnp.floor(y)
    x_frac = x - x_floor
    y_frac = y - y_floor

    dx = jnp.arange(mask_shape[1])[:, None, None]
    dy = jnp.arange(mask_shape[0])[None, :, None]

    # Generate coordinates for bilinear interpolation
    x1 = x_floor[None, None, :].astype(int) + dx
    x2 = x1 + 1
    y1 = y_floor[None, None, :].astype(int) + dy
    y2 = y1 + 1

    # Calculate weights for bilinear interpolation
    wx2 = x_frac[None, None, :]
    wx1 = 1 - wx2
    wy2 = y_frac[None, None, :]
    wy1 = 1 - wy2

    # Calculate droplet masks
    droplet_masks = jnp.einsum("tn,thw->hwn", composition, mask)

    # Initialize background
    bg = sample("bg", dist.Uniform(0, 1))
    img = jnp.full((h, w), bg)

    # Add droplets using bilinear interpolation
    img = img.at[y1, x1].add(droplet_masks * (wx1 * wy1))
    img = img.at[y1, x2].add(droplet_masks * (wx2 * wy1))
    img = img.at[y2, x1].add(droplet_masks * (wx1 * wy2))
    img = img.at[y2, x2].add(droplet_masks * (wx2 * wy2))

    img = jnp.clip(img, 0, 1)
    img = deterministic("img", img)
    diff = deterministic("diff", channel - img)
    sample("obs", dist.Normal(scale=0.05), obs=diff)


def load_hue(path: str) -> np.ndarray:
    """The seed's preprocessing: quarter-size Pillow resize, HSV, hue channel in [0, 1].

    Parameters
    ----------
    path : image file.

    Returns
    -------
    ``(h, w)`` float64 hue channel of the downscaled image.
    """
    img = Image.open(path)
    img = img.resize((img.width // SEED_DOWNSCALE, img.height // SEED_DOWNSCALE))
    img_hsv = np.array(img.convert("HSV")) / 255.0
    return img_hsv[..., 0]


def reconstructor(guide: AutoNormal, args: tuple):
    """A jitted function mapping guide parameters to the model's rendered image.

    Every latent is set to the guide's median (the posterior-mean image of a normal
    guide, up to the clip).

    Parameters
    ----------
    guide : the guide being fitted.
    args : the model's positional arguments ``(w, h, n_droplets, channel)``.

    Returns
    -------
    callable ``params -> (h, w) image``.
    """

    def render(params):
        # Every latent is substituted, so the seed handler only satisfies numpyro's API.
        conditioned = seed(substitute(model, data=guide.median(params)), 0)
        return trace(conditioned).get_trace(*args)["img"]["value"]

    return jax.jit(render)


def rmse(a: np.ndarray, b: np.ndarray) -> float:
    """Root-mean-square difference of two equally shaped arrays."""
    return float(np.sqrt(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)))


def _chunk_runner(svi: SVI, args: tuple, length: int, state):
    """Compile ``length`` SVI steps as one XLA call; returns (compiled fn, compile seconds)."""

    def run_chunk(svi_state):
        def body(carry, _):
            carry, loss = svi.update(carry, *args)
            return carry, loss

        return jax.lax.scan(body, svi_state, None, length=length)

    start = time.perf_counter()
    compiled = jax.jit(run_chunk).lower(state).compile()
    return compiled, time.perf_counter() - start


def run(path: str, steps: int, chunk: int = 1000, progress=None) -> dict:
    """Fit the seed's part-2 model to ``path`` for ``steps`` SVI steps.

    Parameters
    ----------
    path : image file (the seed uses ``data/example.jpg``).
    steps : number of SVI steps (the seed uses 100,000).
    chunk : steps per jitted call; RMSE is recorded after every chunk.
    progress : optional callable ``(step, seconds, rmse)`` called after every chunk.

    Returns
    -------
    dict with ``steps``; ``seconds`` (SVI steps only: no compilation, no RMSE
    evaluation); ``steps_per_s``; ``rmse_by_step`` (``{step: hue RMSE}``, including
    step 0, the initial guess); ``seconds_by_step`` (cumulative ``seconds`` at the same
    steps); ``init_s`` (``svi.init``, which ``svi.run`` also
    pays); ``compile_s``; ``final_loss`` (mean ELBO loss of the
    last chunk); ``shape`` (``(h, w)`` fitted).
    """
    channel = load_hue(path)
    h, w = channel.shape
    args = (w, h, SEED_DROPLETS, channel)
    guide = AutoNormal(model)
    svi = SVI(model, guide, Adam(0.01), Trace_ELBO())
    start = time.perf_counter()
    state = svi.init(jax.random.PRNGKey(0), *args)
    init_s = time.perf_counter() - start

    render = reconstructor(guide, args)
    record = run_in_chunks(svi, args, state, steps, chunk, lambda s: rmse(channel, render(svi.get_params(s))), progress)
    return {**record, "init_s": init_s, "shape": (h, w)}


def run_in_chunks(svi: SVI, args: tuple, state, steps: int, chunk: int, error, progress=None) -> dict:
    """Run ``steps`` SVI steps in jitted chunks, recording ``error(state)`` after each chunk.

    Returns ``steps``, ``seconds`` (SVI steps only), ``steps_per_s``, ``rmse_by_step``
    (step 0 included), ``seconds_by_step``, ``compile_s`` and ``final_loss`` (mean loss of
    the last chunk).
    """
    rmse_by_step = {0: error(state)}
    seconds_by_step = {0: 0.0}
    runners: dict[int, object] = {}
    compile_s = seconds = 0.0
    losses = np.zeros(0)
    done = 0
    while done < steps:
        length = min(chunk, steps - done)
        if length not in runners:
            runners[length], spent = _chunk_runner(svi, args, length, state)
            compile_s += spent
        start = time.perf_counter()
        state, losses = runners[length](state)
        jax.block_until_ready(losses)
        seconds += time.perf_counter() - start
        done += length
        rmse_by_step[done] = error(state)
        seconds_by_step[done] = seconds
        if progress is not None:
            progress(done, seconds, rmse_by_step[done])
    return {
        "steps": steps,
        "seconds": seconds,
        "steps_per_s": steps / seconds if seconds else float("nan"),
        "rmse_by_step": rmse_by_step,
        "seconds_by_step": seconds_by_step,
        "compile_s": compile_s,
        "final_loss": float(np.mean(losses)),
    }
