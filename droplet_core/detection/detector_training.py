"""Training the droplet detector network (``droplet_core.detection.detector_net``) on synthetic scenes.

Training (``train``) draws scenes from ``droplet_core.synthetic.scenes`` with randomised
settings (droplet sizes, densities, blur, noise, colours, background level and shading,
JPEG quality), from scene seeds ``TRAIN_SEED_BASE`` and up (benchmarks and tests use seeds
below 10 000), and validates on scenes from ``VALIDATION_SEED_BASE`` and up. ``save_weights``
writes the weights, ``training.json`` (settings, seeds, versions, the training curve) and
the curve as a PNG (``curve_png``).

Image borders. A training crop cut from inside a scene cuts droplets as an image border
does, but there the visible part of a droplet whose centre lies just outside the crop (no
target) looks like that of one whose centre lies just inside (a target): labelling the one
a droplet and the other not taught the network to doubt every droplet cut by a border
(p_exists 0.1-0.5 for half droplets). A real image border, like a scene's, holds the
centres of the droplets it cuts, so the presence loss ignores the non-droplet cells next
to a side of the crop that is cut from inside the scene (``TrainSettings.edge_ignore_cells``),
and a share of the crops lies on the scene's own border (``border_crop_share``), where
every label is right. Tiny droplets (radius under ``small_radius_px``) weigh more in the
presence loss (``small_weight``): they are few of the cells and the faintest.

Coarse pyramid levels. The pyramid detector (``droplet_core.detection.scale``) sees a large
droplet block-mean downscaled, where everything the optics draw at a fixed size in the
image's pixels (a DIC shear, a phase halo, the blur, a rim of a few pixels) has shrunk with
it: a 27 px DIC droplet at 4x is a 7 px disk with a relief a quarter of a pixel wide, which no
scene drawn at its own size shows. A share of the scenes of the other families
(``TrainSettings.coarse_share``) is drawn ``COARSE_FACTORS`` times larger, droplets, field
and all, and block-mean downscaled to the training size, as such a level sees them.
Fluorescent droplets at different depths overlap in projection; the scenes' random
placement keeps them 0.85 of a contact apart or more, so a share of the fluorescence scenes
(``TrainSettings.overlap_share``) lets them overlap (``OVERLAP_DISTANCE_FRACTION``).

``python -m droplet_core train-encoder --init-weights DIR`` fine-tunes saved weights;
``training.json`` then records their checksum and how they were made.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
from PIL import Image, ImageDraw

from droplet_core.detection.detector_net import (
    FAMILY_RADIUS_RANGE_PX,
    RECORD_FILE,
    STRIDE,
    WEIGHTS_FILE,
    Encoder,
    EncoderArchitecture,
    decode,
    init_params,
    load_weights,
    normalise,
    raw_from_output,
)
from droplet_core.detection.matching import match_droplets
from droplet_core.imaging import images
from droplet_core.imaging.channels import extract_channel
from droplet_core.provenance import jax_device_description, library_versions
from droplet_core.synthetic.scenes import (
    FAMILIES,
    SceneSettings,
    make_scene,
    random_family_settings,
)

CURVE_FILE = "training_curve.png"
TRAIN_SEED_BASE = 10_000
VALIDATION_SEED_BASE = 20_000
# Radius range of the seed-kind training scenes (px).
RADIUS_RANGE_PX = (1.0, 10.0)
# Share of training scenes of the seed's kind; the rest are drawn from the other families.
SEED_KIND_SHARE = 0.5
# Factors a coarse-level scene is drawn larger by before its block-mean downscale (the pyramid's
# octave and the half octaves either side of it).
COARSE_FACTORS = (2, 3, 4)
# Range of ``min_distance_fraction`` of the overlapping fluorescence scenes (the preset: 0.8).
OVERLAP_DISTANCE_FRACTION = (0.6, 0.85)


@dataclass(frozen=True)
class TrainSettings:
    """How ``train`` runs.

    Attributes
    ----------
    seed : PRNG seed of weights, batches and augmentation (scene seeds are fixed).
    minutes : wall-clock budget of the optimisation (scene generation not included); the
        learning rate decays over it, so the step count depends on the machine.
    max_steps : stop after this many steps even if time is left (0: no limit); the
        learning rate then decays over the steps, which makes a run reproducible.
    pool_scenes : training scenes generated up front (seeds ``TRAIN_SEED_BASE + i``).
    scene_px : side of each training scene.
    crop_px : side of the random crops a batch is made of (a multiple of ``STRIDE``).
    batch : crops per step.
    learning_rate : peak Adam learning rate (cosine decay over ``minutes``).
    validate_every : steps between validation F1 evaluations.
    validation_scenes : validation scenes (half default-looking, half randomised).
    border_crop_share : chance that a crop's side lies on the scene's border, per side
        (the crop is otherwise placed uniformly).
    edge_ignore_cells : non-droplet cells within this many cells of a crop side cut from
        inside the scene are left out of the presence loss (a droplet centred just outside
        that side looks like one centred just inside).
    small_radius_px, small_weight : droplet cells of a radius under ``small_radius_px``
        weigh ``small_weight`` in the presence loss (other cells 1).
    init_weights : folder of saved weights to start from (fine-tuning); empty for fresh ones.
    coarse_share : share of the other families' scenes drawn ``COARSE_FACTORS`` times larger
        and block-mean downscaled, as a coarse pyramid level sees them.
    overlap_share : share of the fluorescence scenes whose droplets overlap.
    """

    seed: int = 0
    minutes: float = 25.0
    max_steps: int = 0
    pool_scenes: int = 1200
    scene_px: int = 192
    crop_px: int = 96
    batch: int = 12
    learning_rate: float = 3e-3
    validate_every: int = 250
    validation_scenes: int = 6
    border_crop_share: float = 0.2
    edge_ignore_cells: int = 3
    small_radius_px: float = 2.0
    small_weight: float = 3.0
    init_weights: str = ""
    coarse_share: float = 0.0
    overlap_share: float = 0.0


def random_scene_settings(rng: np.random.Generator, size_px: int) -> SceneSettings:
    """Randomised scene settings of a ``size_px`` square scene (training and validation).

    Radii 1-10 px with medians 1.3-5 px, sparse to fully crowded, random substrate and
    droplet colours (darker or lighter than the substrate), rims, shading, caustics,
    uneven illumination, blur, noise and JPEG quality.
    """
    median = float(np.exp(rng.uniform(np.log(1.3), np.log(5.0))))
    log_sd = float(rng.uniform(0.25, 0.7))
    mean_area = np.pi * median**2 * np.exp(2 * log_sd**2)
    coverage = float(rng.uniform(0.05, 0.6))
    n = int(max(5, coverage * size_px**2 / mean_area))
    background = rng.uniform(0.25, 0.9) * (1.0 + rng.uniform(-0.15, 0.15, 3))
    n_colours = int(rng.integers(1, 4))
    darker = rng.uniform() < 0.8
    palette = []
    for _ in range(n_colours):
        if darker:
            palette.append(np.clip(background * rng.uniform(0.3, 0.95) + rng.uniform(-0.15, 0.15, 3), 0.02, 0.98))
        else:
            palette.append(np.clip(background + rng.uniform(0.1, 0.4) + rng.uniform(-0.1, 0.1, 3), 0.02, 0.98))
    caustic = np.clip(rng.uniform(0.7, 1.0, 3) - rng.uniform(0.0, 0.5) * np.eye(3)[rng.integers(3)], 0.0, 1.0)
    return SceneSettings(
        width_px=size_px,
        height_px=size_px,
        n_droplets=n,
        radius_min_px=RADIUS_RANGE_PX[0],
        radius_max_px=RADIUS_RANGE_PX[1],
        radius_median_px=median,
        radius_log_sd=log_sd,
        min_distance_fraction=float(rng.uniform(0.85, 1.3)),
        background_rgb=tuple(float(v) for v in np.clip(background, 0.05, 0.95)),
        background_variation=float(rng.uniform(0.0, 0.12)),
        palette_rgb=tuple(tuple(float(v) for v in c) for c in palette),
        composition_concentration=tuple(float(v) for v in rng.uniform(0.2, 1.0, n_colours)),
        rim_darkness=float(rng.uniform(0.0, 0.6)),
        rim_width=float(rng.uniform(0.15, 0.45)),
        shading=float(rng.uniform(0.0, 0.4)),
        caustic_rgb=tuple(float(v) for v in caustic),
        caustic_strength=float(rng.uniform(0.0, 1.0)),
        caustic_offset=float(rng.uniform(0.3, 0.8)),
        caustic_size=float(rng.uniform(0.2, 0.5)),
        caustic_spill=float(rng.uniform(0.0, 0.8)),
        caustic_onset_radius_px=float(rng.uniform(1.0, 3.0)),
        blur_sigma_px=float(rng.uniform(0.3, 1.2)),
        noise_sd=float(np.exp(rng.uniform(np.log(0.003), np.log(0.04)))),
        jpeg_quality=None if rng.uniform() < 0.2 else int(rng.integers(50, 100)),
    )


def targets(truth: pd.DataFrame, height: int, width: int) -> np.ndarray:
    """Training targets ``(ceil(h / STRIDE), ceil(w / STRIDE), 4)`` of a truth table.

    Per cell: presence (0/1), centre offset from the cell centre in cells (x, y), log
    radius (px). Cell ``(i, j)`` covers pixels ``STRIDE * i .. STRIDE * i + STRIDE - 1``;
    where two centres share a cell the smaller droplet (later in ``truth``, which is
    placed largest first) is the target.
    """
    grid = np.zeros((-(-height // STRIDE), -(-width // STRIDE), 4), dtype=np.float32)
    x, y, radius = (truth[c].to_numpy(np.float64) for c in ("x", "y", "radius"))
    col = np.clip(np.floor((x + 0.5) / STRIDE).astype(int), 0, grid.shape[1] - 1)
    row = np.clip(np.floor((y + 0.5) / STRIDE).astype(int), 0, grid.shape[0] - 1)
    centre = (STRIDE - 1) / 2.0
    grid[row, col, 0] = 1.0
    grid[row, col, 1] = (x - (STRIDE * col + centre)) / STRIDE
    grid[row, col, 2] = (y - (STRIDE * row + centre)) / STRIDE
    grid[row, col, 3] = np.log(radius)
    return grid


def loss_terms(
    params, architecture: EncoderArchitecture, features: jnp.ndarray, target: jnp.ndarray, weight: jnp.ndarray
):
    """Presence BCE over the cells, weighted by ``weight`` ``(b, hc, wc)`` (0: ignored), plus
    L1 offset and log-radius errors over droplet cells.

    Returns the total loss and ``(bce, offset, radius)`` terms, all scalars.
    """
    out = Encoder(architecture).apply({"params": params}, features)
    presence = target[..., 0]
    cells = (weight > 0).sum() + 1.0
    bce = (optax.sigmoid_binary_cross_entropy(out[..., 0], presence) * weight).sum() / cells
    count = presence.sum() + 1.0
    offset = (jnp.abs(out[..., 1:3] - target[..., 1:3]).sum(-1) * presence).sum() / count
    radius = (jnp.abs(out[..., 3] - target[..., 3]) * presence).sum() / count
    return 20.0 * bce + offset + radius, (bce, offset, radius)


def presence_weights(target: np.ndarray, scene_sides: np.ndarray, settings: TrainSettings) -> np.ndarray:
    """Presence-loss weights ``(b, hc, wc)`` of a batch of crop targets ``(b, hc, wc, 4)``.

    ``scene_sides`` ``(b, 4)`` says for each crop whether its top, bottom, left and right
    side lie on the scene's border. Droplet cells under ``settings.small_radius_px`` weigh
    ``small_weight``; non-droplet cells within ``edge_ignore_cells`` of a side cut from
    inside the scene weigh 0; the rest 1.
    """
    presence = target[..., 0] > 0.5
    small = presence & (target[..., 3] < np.log(settings.small_radius_px))
    weight = np.where(small, settings.small_weight, 1.0).astype(np.float32)
    band = settings.edge_ignore_cells
    near_cut = np.zeros(presence.shape, dtype=bool)
    if band:
        for k, (top, bottom, left, right) in enumerate(scene_sides):
            near_cut[k, :band] |= not top
            near_cut[k, -band:] |= not bottom
            near_cut[k, :, :band] |= not left
            near_cut[k, :, -band:] |= not right
    weight[near_cut & ~presence] = 0.0
    return weight


def crop_origins(rng: np.random.Generator, n: int, scene_px: int, settings: TrainSettings) -> np.ndarray:
    """Crop origins ``(n,)`` in cells along one axis: on the scene's first or last cell row
    with chance ``border_crop_share`` each, else uniform."""
    last = (scene_px - settings.crop_px) // STRIDE
    uniform = rng.integers(0, last + 1, n)
    side = rng.uniform(size=n)
    return np.where(
        side < settings.border_crop_share, 0, np.where(side < 2 * settings.border_crop_share, last, uniform)
    )


def _scene_example(
    seed: int, size_px: int, coarse_share: float = 0.0, overlap_share: float = 0.0
) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Features, targets and truth of training/validation scene ``seed`` (randomised settings).

    A share ``SEED_KIND_SHARE`` of the scenes is of the seed's kind (``random_scene_settings``),
    the rest of the other families (fluorescence, brightfield, phase contrast, packed
    emulsions; ``scenes.random_family_settings``); of those, a share ``coarse_share`` is drawn
    larger and block-mean downscaled, and a share ``overlap_share`` of the fluorescence scenes
    has overlapping droplets (see the module text). Both draw from their own random stream,
    so a scene they leave alone is the same as with shares of zero. The channel fed to the
    network is RGB or grey at random (the fits' default channel is grey); horizontal flips
    happen at batch time.
    """
    rng = np.random.default_rng(seed)
    variation = np.random.default_rng([seed, 1])
    factor = 1
    if rng.uniform() < SEED_KIND_SHARE:
        settings = random_scene_settings(rng, size_px)
    else:
        others = tuple(family for family in FAMILIES if family != "seed")
        if variation.uniform() < coarse_share:
            factor = int(variation.choice(COARSE_FACTORS))
        low, high = FAMILY_RADIUS_RANGE_PX
        settings = random_family_settings(rng, factor * size_px, (factor * low, factor * high), others)
        if settings.family == "fluorescence" and variation.uniform() < overlap_share:
            settings = dataclasses.replace(
                settings, min_distance_fraction=float(variation.uniform(*OVERLAP_DISTANCE_FRACTION))
            )
    rgb, truth = make_scene(seed, settings)
    image = images.downscale(rgb.astype(np.float32) / 255.0, factor)
    truth = truth.assign(
        x=images.to_fit_px(truth["x"], factor), y=images.to_fit_px(truth["y"], factor), radius=truth["radius"] / factor
    )
    channel = extract_channel(image, "rgb" if rng.uniform() < 0.5 else "grey")
    return normalise(channel), targets(truth, size_px, size_px), truth


def _default_validation_scene(seed: int) -> tuple[np.ndarray, pd.DataFrame]:
    """A default-looking scene (the benchmark kind) at 250x200 px, grey or RGB by seed parity."""
    rgb, truth = make_scene(seed, SceneSettings(width_px=250, height_px=200, n_droplets=375))
    return extract_channel(rgb.astype(np.float32) / 255.0, "grey" if seed % 2 else "rgb"), truth


def train(
    settings: TrainSettings, architecture: EncoderArchitecture = EncoderArchitecture(), log=print
) -> tuple[dict, dict]:
    """Train the encoder on synthetic scenes.

    Parameters
    ----------
    settings : budget, data and optimiser settings.
    architecture : network shape.
    log : called with one line of progress text now and then.

    Returns
    -------
    params : the trained parameters.
    record : what ``training.json`` stores (settings, seeds, versions, curve, timings).
    """
    if settings.crop_px % STRIDE or settings.crop_px > settings.scene_px:
        raise ValueError("crop_px must be a multiple of the stride and at most scene_px")
    started = time.perf_counter()
    pool = [
        _scene_example(TRAIN_SEED_BASE + i, settings.scene_px, settings.coarse_share, settings.overlap_share)
        for i in range(settings.pool_scenes)
    ]
    features_pool = np.stack([p[0] for p in pool])
    targets_pool = np.stack([p[1] for p in pool])
    n_val = settings.validation_scenes
    validation = [_default_validation_scene(VALIDATION_SEED_BASE + i) for i in range(n_val - n_val // 2)]
    validation += [
        (None, p[2], p[0]) for p in (_scene_example(VALIDATION_SEED_BASE + 100 + i, 200) for i in range(n_val // 2))
    ]
    generated = time.perf_counter()
    log(f"{settings.pool_scenes} training scenes in {generated - started:.0f} s")

    key = jax.random.PRNGKey(settings.seed)
    init_key, key = jax.random.split(key)
    if settings.init_weights:
        start = init_weights_record(settings.init_weights)
        architecture, params = load_weights(settings.init_weights)
    else:
        params = init_params(architecture, init_key)
    optimiser = optax.inject_hyperparams(optax.adam)(learning_rate=settings.learning_rate)
    opt_state = optimiser.init(params)
    budget_s = 60.0 * settings.minutes

    @jax.jit
    def step(params, opt_state, features, target, weight, learning_rate):
        (loss, terms), grads = jax.value_and_grad(loss_terms, has_aux=True)(
            params, architecture, features, target, weight
        )
        opt_state.hyperparams["learning_rate"] = learning_rate
        updates, opt_state = optimiser.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, terms

    apply = jax.jit(lambda params, features: Encoder(architecture).apply({"params": params}, features))

    def validate(params) -> tuple[float, float]:
        scores = []
        for channel, truth, *features in validation:
            x = features[0] if features else normalise(channel)
            found = decode(raw_from_output(np.asarray(apply(params, jnp.asarray(x[None])))[0]))
            scores.append(match_droplets(truth, found))
        default = [s.f1 for s in scores[: n_val - n_val // 2]]
        varied = [s.f1 for s in scores[n_val - n_val // 2 :]]
        return tuple(float(np.mean(f1)) if f1 else float("nan") for f1 in (default, varied))

    rng = np.random.default_rng(settings.seed)
    cells = settings.crop_px // STRIDE
    curve: list[dict] = []
    losses: list[float] = []
    train_start = time.perf_counter()
    n_steps = 0
    while True:
        elapsed = time.perf_counter() - train_start
        if elapsed >= budget_s or (settings.max_steps and n_steps >= settings.max_steps):
            break
        # The learning rate decays over the run: over its steps when they are capped (then
        # the run is a function of the settings alone), otherwise over its time.
        fraction = n_steps / settings.max_steps if settings.max_steps else min(elapsed / budget_s, 1.0)
        warmup = min(1.0, (n_steps + 1) / 100.0)
        learning_rate = settings.learning_rate * warmup * 0.5 * (1.0 + np.cos(np.pi * fraction))
        index = rng.integers(0, len(pool), settings.batch)
        top = crop_origins(rng, settings.batch, settings.scene_px, settings)
        left = crop_origins(rng, settings.batch, settings.scene_px, settings)
        last = (settings.scene_px - settings.crop_px) // STRIDE
        scene_sides = np.stack([top == 0, top == last, left == 0, left == last], axis=1)
        flip = rng.uniform(size=settings.batch) < 0.5
        features = np.stack(
            [
                features_pool[i, STRIDE * t : STRIDE * (t + cells), STRIDE * c : STRIDE * (c + cells)]
                for i, t, c in zip(index, top, left)
            ]
        )
        target = np.stack([targets_pool[i, t : t + cells, c : c + cells] for i, t, c in zip(index, top, left)])
        # A horizontal flip mirrors columns; cells of width STRIDE stay aligned and the
        # x offset changes sign.
        features[flip] = features[flip, :, ::-1]
        target[flip] = target[flip, :, ::-1]
        target[flip, ..., 1] *= -1.0
        scene_sides[flip] = scene_sides[flip][:, [0, 1, 3, 2]]
        weight = presence_weights(target, scene_sides, settings)
        params, opt_state, loss, terms = step(
            params,
            opt_state,
            jnp.asarray(features),
            jnp.asarray(target),
            jnp.asarray(weight),
            jnp.float32(learning_rate),
        )
        n_steps += 1
        losses.append(float(loss))
        if n_steps % settings.validate_every == 0 or n_steps == settings.max_steps:
            f1_default, f1_varied = validate(params)
            point = {
                "step": n_steps,
                "seconds": round(time.perf_counter() - train_start, 1),
                "loss": float(np.mean(losses[-settings.validate_every :])),
                "validation_f1_default": round(f1_default, 4),
                "validation_f1_varied": round(f1_varied, 4),
                "bce": float(terms[0]),
                "offset": float(terms[1]),
                "log_radius": float(terms[2]),
            }
            curve.append(point)
            log(
                f"step {n_steps}  loss {point['loss']:.3f}  val F1 default {f1_default:.3f} "
                f"varied {f1_varied:.3f}  {point['seconds']:.0f} s"
            )
    record = {
        "command": training_command(settings),
        **({"init_weights": start} if settings.init_weights else {}),
        "architecture": dataclasses.asdict(architecture),
        "stride_px": STRIDE,
        "train_settings": dataclasses.asdict(settings),
        "training_scene_seeds": [TRAIN_SEED_BASE, TRAIN_SEED_BASE + settings.pool_scenes - 1],
        "validation_scene_seeds": {
            "default_looking": [VALIDATION_SEED_BASE + i for i in range(n_val - n_val // 2)],
            "randomised": [VALIDATION_SEED_BASE + 100 + i for i in range(n_val // 2)],
        },
        "steps": n_steps,
        "loss_by_step": [round(v, 4) for v in losses],
        "curve": curve,
        "timings": {"scenes_s": round(generated - started, 1), "train_s": round(time.perf_counter() - train_start, 1)},
        "versions": library_versions(),
        "device": jax_device_description(),
        "parameter_count": int(sum(np.size(p) for p in jax.tree_util.tree_leaves(params))),
    }
    return params, record


def training_command(settings: TrainSettings) -> str:
    """The command line that trains with ``settings`` (``--out DIR`` for the output folder)."""
    return (
        f"python -m droplet_core train-encoder --out DIR --minutes {settings.minutes:g} --seed {settings.seed}"
        + (f" --steps {settings.max_steps}" if settings.max_steps else "")
        + (f" --learning-rate {settings.learning_rate:g} --init-weights INIT" if settings.init_weights else "")
        + (f" --coarse-share {settings.coarse_share:g}" if settings.coarse_share else "")
        + (f" --overlap-share {settings.overlap_share:g}" if settings.overlap_share else "")
    )


def init_weights_record(folder: str) -> dict:
    """What ``training.json`` says of the weights a fine-tune started from: their SHA-256 and
    how they were made (their own ``command`` and ``steps``, and their start if fine-tuned too)."""
    path = Path(folder)
    record = json.loads((path / RECORD_FILE).read_text())
    start = {
        "sha256": hashlib.sha256((path / WEIGHTS_FILE).read_bytes()).hexdigest(),
        "command": record["command"],
        "steps": record["steps"],
    }
    if "init_weights" in record:
        start["init_weights"] = record["init_weights"]
    return start


def save_weights(params: dict, record: dict, out_dir: str | Path) -> Path:
    """Write the weights, ``training.json`` and the training-curve PNG into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / WEIGHTS_FILE).write_bytes(flax.serialization.to_bytes(jax.device_get(params)))
    (out / RECORD_FILE).write_text(json.dumps(record, indent=1))
    curve_png(record).save(out / CURVE_FILE)
    return out


def curve_png(record: dict, size: tuple[int, int] = (640, 320)) -> Image.Image:
    """Training curve: loss (blue, per 50-step mean, left) and validation F1 (orange/green, right, 0-1)."""
    width, height = size
    margin = 40
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle([margin, 10, width - margin, height - margin], outline="black")
    losses = np.asarray(record["loss_by_step"], dtype=float)
    n = max(len(losses), 1)
    sx = lambda step: margin + (width - 2 * margin) * step / n  # noqa: E731
    if len(losses) >= 50:
        smooth = losses[: len(losses) // 50 * 50].reshape(-1, 50).mean(axis=1)
        top, bottom = float(smooth.max()), float(smooth.min())
        sy = lambda v: 10 + (height - margin - 10) * (top - v) / max(top - bottom, 1e-9)  # noqa: E731
        draw.line([(sx(50 * i + 25), sy(v)) for i, v in enumerate(smooth)], fill=(31, 119, 180), width=2)
        draw.text((margin + 4, 12), f"loss {top:.2f} .. {bottom:.2f}", fill=(31, 119, 180))
    fy = lambda v: 10 + (height - margin - 10) * (1.0 - v)  # noqa: E731
    for name, colour in (("validation_f1_default", (255, 127, 14)), ("validation_f1_varied", (44, 160, 44))):
        points = [(sx(p["step"]), fy(p[name])) for p in record["curve"] if np.isfinite(p[name])]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        if points:
            draw.text(
                (width - margin - 200, 12 + 12 * (colour[0] < 100)),
                f"{name} {record['curve'][-1][name]:.3f}",
                fill=colour,
            )
    draw.text((margin, height - margin + 8), f"step 0 .. {len(losses)}", fill="black")
    return image
