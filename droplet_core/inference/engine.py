"""The fit engine: stochastic variational inference in jitted chunks.

Explicit state in, state out, as numpyro's ``SVI``: ``run_fit`` prepares the channel,
starts every droplet at a detector candidate, then loops over jitted chunks of
``CHUNK_STEPS`` SVI updates. Between chunks it reports progress, honours a stop request,
and at fixed fractions of the run prunes droplets whose learned contribution is
negligible, merges near-duplicates and switches spare slots on where the residual shows a
missed droplet (``droplet_core.inference.droplet_switching``: this is how the model decides the droplet
count without recompiling, droplets are switched on and off through an ``active`` mask).
A fit with a reused appearance has far fewer and almost independent unknowns; it runs
Levenberg-Marquardt (``droplet_core.inference.reuse_fit``) instead of SVI, on the same programs.

The jitted programs are built once per variant and padded problem shape (``_programs``):
image, layout and learning rates are their inputs, so refits and fits of similar images
reuse them, and JAX's compilation cache (``droplet_core/__init__.py``) keeps them for
later processes. Every fit ends with the Laplace uncertainty of each droplet
(``droplet_core.inference.uncertainty``).
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from functools import lru_cache, partial
from types import ModuleType
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
from numpyro.distributions.util import sum_rightmost
from numpyro.handlers import seed, substitute, trace
from numpyro.infer import SVI
from numpyro.optim import optax_to_numpyro

from droplet_core.detection.in_image import detect_droplets
from droplet_core.detection.log_candidates import (
    centre_contrast,
    contrast_image,
    find_candidates,
)
from droplet_core.detection.scale import (
    CANDIDATE_THRESHOLD,
    MAX_FIT_RADIUS_PX,
    ScaleChoice,
    choose_downscale,
)
from droplet_core.fit_ids import fit_key
from droplet_core.imaging import images
from droplet_core.imaging.channels import extract_channel
from droplet_core.inference.droplet_switching import MAX_RADIUS_PX, MIN_RADIUS_PX, tidy
from droplet_core.inference.guide import (
    Evaluation,
    MeanFieldGuide,
    OrderedTraceELBO,
    latent_sites,
)
from droplet_core.inference.reuse_fit import fit_with_fixed_appearance, reuse_uncertainty
from droplet_core.inference.uncertainty import (
    at_locs,
    droplet_uncertainty,
    model_discrepancy,
    with_model_discrepancy,
)
from droplet_core.inference.verdict import judge_fit, ready_verdict
from droplet_core.measurements.counting import count_of_table
from droplet_core.measurements.focus import with_edge_blur
from droplet_core.models.common import ModelSpec, background_level, bucket_size, make_layout, saturation_levels
from droplet_core.provenance import jax_device_description, library_versions
from droplet_core.results import (
    FitReport,
    FitResult,
    OptimiserRun,
    Timings,
    UncertaintyMethod,
    WarmStartState,
    rmse_per_channel,
)
from droplet_core.settings import FitProgress, FitSettings
from droplet_core.variants import load_variant

CHUNK_STEPS = 50
# Fractions of the run after which negligible droplets are pruned and duplicates merged.
SWITCHING_AT = (0.25, 0.5, 0.75)
# Spare droplet slots (inactive until the residual shows a droplet the candidates missed).
SPARE_SLOTS_FRACTION = 0.2
SPARE_SLOTS_MIN = 16
GUIDE_INIT_SCALE = 0.01
# Guide scale of a reused (fixed) appearance: its samples are its location.
FROZEN_SCALE = 1e-6
FINAL_RATE_FRACTION = 0.05
# Detections smaller than this (fit px) are below what the chosen downscale can draw.
MIN_DRAWN_RADIUS_PX = 0.5
# A verdict's quality, worst first: of two fits of one image the higher is kept.
QUALITY_RANK = {"failed": 0, "partial": 1, "good": 2}
GOOD = QUALITY_RANK["good"]


class FitError(ValueError):
    """A fit that cannot run or did not converge; the message is one line for the user."""


class Region(NamedTuple):
    """An uploaded image made ready for fitting (``prepare_region``).

    ``rgb`` is the ``(h, w, 3)`` cropped and downscaled image, ``factor`` the downscale and
    ``origin`` the crop's ``(x0, y0)`` in pixels of the uploaded image. ``scale`` says why
    an automatic downscale was chosen (``None`` when the user set it); ``detections`` are
    the pyramid detector's droplets in pixels of the uploaded image (``None`` for LoG starts).
    """

    rgb: np.ndarray
    factor: int
    origin: tuple[int, int]
    scale: ScaleChoice | None
    detections: pd.DataFrame | None


def prepare_region(image: np.ndarray, settings: FitSettings, detect: bool = True) -> Region:
    """Crop, detect and downscale an uploaded ``(H, W, 3)`` image for fitting.

    An automatic downscale follows the droplets' size (``droplet_core.detection.scale``), which the
    pyramid detector measures; LoG starts without a set downscale use it too. ``detect=False``
    (a set downscale and droplets known from elsewhere) skips the detector.
    """
    detections = None
    if not settings.downscale or (detect and settings.initializer == "encoder"):
        # With ``in_band``: detections outside their level's band start fits but do not set the scale.
        detections = detect_droplets(
            image,
            threshold=CANDIDATE_THRESHOLD,
            downscale=settings.downscale or 1,
            crop=settings.crop,
            with_band=True,
        )
    image, origin = _cropped(image, settings)
    choice = None if settings.downscale else choose_downscale(detections, *image.shape[:2])
    factor = settings.downscale or choice.factor
    return Region(images.downscale(image, factor), factor, origin, choice, detections)


def _cropped(image: np.ndarray, settings: FitSettings) -> tuple[np.ndarray, tuple[int, int]]:
    """The uploaded ``(H, W, 3)`` ``image`` cropped as ``settings.crop`` says, and the crop's ``(x0, y0)``."""
    if settings.crop is None:
        return image, (0, 0)
    return images.crop(image, settings.crop), images.crop_origin(settings.crop)


def prepare_channel(image: np.ndarray, settings: FitSettings) -> tuple[np.ndarray, int, tuple[int, int]]:
    """``prepare_region``'s ``(h, w, c)`` fit channel, downscale factor and crop origin."""
    region = prepare_region(image, settings)
    return extract_channel(region.rgb, settings.channel).astype(np.float32), region.factor, region.origin


def ready_judgement(image: np.ndarray, settings: FitSettings) -> None:
    """Work out ahead the part of a fit's verdict that depends on the image alone
    (``verdict.ready_verdict``), for a fit of the uploaded ``(H, W, 3)`` ``image`` with
    ``settings``, which must set the downscale (as a time-lapse's later frames do)."""
    region = prepare_region(image, settings, detect=False)
    observed = extract_channel(region.rgb, settings.channel).astype(np.float32)
    ready_verdict(observed, (MIN_RADIUS_PX, MAX_FIT_RADIUS_PX))


def _candidates(observed: np.ndarray, region: Region, settings: FitSettings) -> tuple[np.ndarray, np.ndarray]:
    """``(n, 4)`` detector candidates x, y, radius, contrast in fit pixels (strongest first), and
    the ``(c,)`` background between them (``background_level``).

    ``settings.initializer`` picks the detector: the trained encoder on every level of an
    image pyramid (``droplet_core.detection.scale``; most probable first), which looks at the RGB
    image the fit channel was made from (it was trained on RGB and grey, not on hue or
    saturation), or Laplacian-of-Gaussian candidates in the fit channel (largest contrast
    first). The contrast (sign: droplets darker or lighter) is read from the fit channel.
    """
    factor, (x0, y0) = region.factor, region.origin
    if settings.initializer == "encoder":
        table = region.detections.sort_values("p_exists", ascending=False, kind="stable")
        table = pd.DataFrame(
            {
                "x": images.to_fit_px(table["x"].to_numpy() - x0, factor),
                "y": images.to_fit_px(table["y"].to_numpy() - y0, factor),
                "radius": table["radius"].to_numpy() / factor,
            }
        )
        # Droplets far below a fit pixel cannot be drawn at this downscale.
        table = table[table["radius"] >= MIN_DRAWN_RADIUS_PX].head(settings.droplets or None)
        table["radius"] = table["radius"].clip(MIN_RADIUS_PX, MAX_FIT_RADIUS_PX)
        background = background_level(observed, table[["x", "y", "radius"]].to_numpy())
        table["contrast"] = centre_contrast(contrast_image(observed, background)[1], table["x"], table["y"])
    else:
        largest = (
            MAX_RADIUS_PX
            if region.scale is None or not np.isfinite(region.scale.radius_large_px)
            else float(np.clip(2.0 * region.scale.radius_large_px / factor, MAX_RADIUS_PX, MAX_FIT_RADIUS_PX))
        )
        table = find_candidates(
            observed,
            min_radius_px=MIN_RADIUS_PX,
            max_radius_px=largest,
            max_count=settings.droplets or None,
        )
        background = background_level(observed, table[["x", "y", "radius"]].to_numpy())
    if table.empty:
        raise FitError("no droplet candidates found in this channel; try another channel or a smaller downscale")
    return table[["x", "y", "radius", "contrast"]].to_numpy(np.float32), background


def _start_candidates(
    droplets: pd.DataFrame, observed: np.ndarray, factor: int, origin: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """``(n, 4)`` candidates x, y, radius, contrast in fit pixels from an earlier fit's droplet
    table (pixels of its uploaded image), most probable first, and the ``(c,)`` background
    between them."""
    if droplets.empty:
        raise FitError("the fit to start from has no droplets")
    table = droplets.sort_values("p_exists", ascending=False, kind="stable") if "p_exists" in droplets else droplets
    x = images.to_fit_px(table["x"].to_numpy() - origin[0], factor)
    y = images.to_fit_px(table["y"].to_numpy() - origin[1], factor)
    radius = np.clip(table["radius"].to_numpy() / factor, MIN_RADIUS_PX, MAX_FIT_RADIUS_PX)
    background = background_level(observed, np.stack([x, y, radius], axis=1))
    contrast = centre_contrast(contrast_image(observed, background)[1], x, y)
    return np.stack([x, y, radius, np.asarray(contrast)], axis=1).astype(np.float32), background


def learning_rates(settings: FitSettings, warm: bool) -> np.ndarray:
    """``(steps,)`` Adam learning rate of every step: a warm-up and cosine decay, or for a
    continued fit the final, small rate (fresh Adam moments make large first steps, which
    would undo what was reached). Rates are inputs of the compiled update, not constants in
    it, so fits of any length and rate share one program."""
    final_rate = settings.learning_rate * FINAL_RATE_FRACTION
    if warm:
        return np.full(settings.steps, final_rate, np.float32)
    warmup = max(settings.steps // 20, 1)
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, settings.learning_rate, warmup, max(settings.steps, warmup + 1), end_value=final_rate
    )
    # Jitted: run eagerly, each of the schedule's dozen ops would compile on its own.
    return np.asarray(jax.jit(schedule)(np.arange(settings.steps)), np.float32)


def optimiser_params(state) -> dict:
    """The guide parameters (unconstrained, as the optimiser holds them) of an SVI ``state``.

    This and ``with_optimiser_state`` are the only readers of the optimiser state's layout:
    numpyro's optax wrapper keeps ``(step, (params, optax_state))``.
    """
    _, (params, _) = state.optim_state
    return params


def with_optimiser_state(state, params: dict | None = None, learning_rate=None):
    """SVI ``state`` with the optimiser's ``params`` and/or learning rate replaced; Adam's
    moments and step count carry on."""
    step, (old_params, optax_state) = state.optim_state
    if learning_rate is not None:
        optax_state = optax_state._replace(hyperparams={**optax_state.hyperparams, "learning_rate": learning_rate})
    return state._replace(optim_state=(step, (old_params if params is None else params, optax_state)))


class Programs(NamedTuple):
    """One variant's compiled programs for one shape of problem (see ``_programs``), and the
    variant's module (``droplet_core.models.Variant``)."""

    variant: ModuleType
    sites: dict
    guide: MeanFieldGuide
    svi: SVI
    init: Callable
    run_chunk: Callable
    evaluate: Callable
    guide_params: Callable


@lru_cache(maxsize=4)
def _programs(model_name: str, spec_tree, leaf_shapes: tuple) -> Programs:
    """The jitted programs of ``model_name`` for a spec of this pytree structure and shapes.

    They take the image, anchors, active mask, spec and learning rates as arguments, so
    every fit of the same shape (the layout is padded to coarse sizes) reuses them, in this
    process and through JAX's compilation cache.
    """
    variant = load_variant(model_name)
    spec = jax.tree.unflatten(spec_tree, [jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in leaf_shapes])
    layout = spec.layout
    abstract = (
        jax.ShapeDtypeStruct((layout.height, layout.width, layout.channels), jnp.float32),
        jax.ShapeDtypeStruct((layout.n_droplets, 3), jnp.float32),
        jax.ShapeDtypeStruct((layout.n_droplets,), jnp.float32),
        spec,
    )
    sites = latent_sites(variant.model, *abstract)
    guide = MeanFieldGuide(sites)
    optimizer = optax_to_numpyro(optax.inject_hyperparams(optax.adam)(learning_rate=0.0))
    svi = SVI(variant.model, guide, optimizer, OrderedTraceELBO())

    def update(state, rate, *args):
        return svi.update(with_optimiser_state(state, learning_rate=rate), *args)

    @jax.jit
    def run_chunk(state, rates, n_steps, *args):
        def body(state, step):
            i, rate = step
            return jax.lax.cond(
                i < n_steps,
                lambda s: update(s, rate, *args),
                lambda s: (s, jnp.float32(jnp.nan)),
                state,
            )

        return jax.lax.scan(body, state, (jnp.arange(CHUNK_STEPS), rates))

    @jax.jit
    def evaluate(params, observed, anchors, active, spec):
        values = guide.median(params)
        traced = trace(substitute(seed(variant.model, 0), data=values)).get_trace(observed, anchors, active, spec)
        per_droplet = [name for name, site in sites.items() if site.per_droplet]
        log_prior = sum(
            _droplet_log_prior(traced[name], guide.transforms[name], params[f"{name}_auto_loc"]) for name in per_droplet
        )
        prior_curvature = {
            name: _prior_curvature(traced[name], guide.transforms[name], params[f"{name}_auto_loc"])
            for name in per_droplet
        }
        return Evaluation(
            values, traced["reconstruction"]["value"], traced["strength"]["value"], log_prior, prior_curvature
        )

    @jax.jit
    def guide_params(state):
        # flax's nested ``$params`` bookkeeping entry is rebuilt on init.
        return {name: value for name, value in svi.get_params(state).items() if not isinstance(value, dict)}

    return Programs(variant, sites, guide, svi, jax.jit(svi.init), run_chunk, evaluate, guide_params)


def programs_for(model_name: str, spec: ModelSpec) -> Programs:
    """``_programs`` of ``model_name`` for ``spec``'s structure and array shapes."""
    leaves, tree = jax.tree.flatten(spec)
    return _programs(model_name, tree, tuple((np.shape(leaf), np.asarray(leaf).dtype) for leaf in leaves))


def run_fit(
    image: np.ndarray,
    settings: FitSettings,
    *,
    image_sha256: str,
    progress: Callable[[FitProgress], None] | None = None,
    stop: threading.Event | None = None,
    warm_start: FitResult | None = None,
    appearance_source: FitResult | None = None,
    fit_id: str | None = None,
    start_from: FitResult | None = None,
) -> FitResult:
    """Fit ``settings.model`` to an uploaded ``(H, W, 3)`` float image in [0, 1].

    An automatic downscale follows the detected droplets' size; where they fall in two sizes
    and the fit at the small ones' scale is not judged good, the large ones' scale is fitted too
    and its result returned when its verdict is better (``ScaleChoice.factor_for_large``).

    Parameters
    ----------
    image : (H, W, 3) float32 RGB as uploaded.
    settings : what to fit and how; ``settings.steps`` more steps when warm starting.
    image_sha256 : sha256 of the uploaded bytes (part of the result's id).
    progress : called with a ``FitProgress`` after every chunk of ``CHUNK_STEPS`` steps.
    stop : when set, the fit ends after the current chunk with status ``"stopped"``.
    warm_start : an earlier result of the same image (or of a similar one: a time-lapse's
        previous frame, its droplets moved with the field), model and channel to continue from.
    appearance_source : the stored fit named by ``settings.appearance_from``, whose learned
        appearance is held fixed.
    fit_id : the key of this request (``fit_ids.fit_key``) when the caller has computed it
        already; a fit stopped early gets its own key.
    start_from : a fit of a similar image (the previous frame of a time-lapse) whose
        droplets are the starting candidates instead of the detector's; its id keys the
        result as a parent does.

    Returns
    -------
    FitResult with droplets in pixels of the uploaded image.
    """
    started = time.perf_counter()
    region = prepare_region(image, settings, detect=start_from is None and warm_start is None)
    fit_region = partial(
        _fit_region,
        image,
        settings=settings,
        started=started,
        image_sha256=image_sha256,
        progress=progress,
        stop=stop,
        warm_start=warm_start,
        appearance_source=appearance_source,
        fit_id=fit_id,
        start_from=start_from,
    )
    result = fit_region(region)
    scale = region.scale
    # Droplets in two sizes are fitted at the scale of the small ones; where that fit leaves
    # something unexplained, the small ones may be a texture (grains inside droplets the
    # detector did not find whole), so the large droplets are fitted at their own scale too
    # and the better judged of the two fits is kept. (Judged alike, the small ones' scale
    # stays: it draws the small droplets too, where they are droplets.)
    if scale is not None and scale.factor_for_large and result.report.status == "done" and _rank(result) < GOOD:
        coarse = fit_region(_at_scale(image, settings, region, scale.for_large_ones()))
        if _rank(coarse) > _rank(result):
            return coarse
    return result


def _rank(result: FitResult) -> int:
    """How well ``result``'s verdict judges it: 0 failed (or unjudged), 1 partial, 2 good."""
    return QUALITY_RANK[result.report.verdict.quality] if result.report.verdict is not None else 0


def _at_scale(image: np.ndarray, settings: FitSettings, region: Region, choice: ScaleChoice) -> Region:
    """``region`` of the uploaded ``(H, W, 3)`` ``image`` downscaled as ``choice`` says."""
    return region._replace(
        rgb=images.downscale(_cropped(image, settings)[0], choice.factor), factor=choice.factor, scale=choice
    )


def _fit_region(
    image: np.ndarray,
    region: Region,
    *,
    settings: FitSettings,
    started: float,
    image_sha256: str,
    progress: Callable[[FitProgress], None] | None,
    stop: threading.Event | None,
    warm_start: FitResult | None,
    appearance_source: FitResult | None,
    fit_id: str | None,
    start_from: FitResult | None,
) -> FitResult:
    """``run_fit`` of the uploaded ``image`` in its prepared ``region`` (same arguments;
    ``started`` is when the request began, ``time.perf_counter()``)."""
    variant = load_variant(settings.model)
    factor, origin = region.factor, region.origin
    observed = extract_channel(region.rgb, settings.channel).astype(np.float32)
    key = jax.random.PRNGKey(settings.seed)
    init_key, svi_key = jax.random.split(key)

    if warm_start is not None:
        _check_warm_start(warm_start, settings, observed.shape)
        anchors = warm_start.warm_start.anchors
        active = warm_start.warm_start.active.astype(np.float32)
        polarity = warm_start.warm_start.polarity
    else:
        found, background = (
            _candidates(observed, region, settings)
            if start_from is None
            else _start_candidates(start_from.droplets, observed, factor, origin)
        )
        polarity = 1.0 if np.median(found[:, 3]) >= 0 else -1.0
        candidates = _with_spare_slots(found, spare=settings.droplets == 0)
        anchors = candidates[:, :3].copy()
        active = (np.arange(len(candidates)) < len(found)).astype(np.float32)
    detected = time.perf_counter()

    layout = make_layout(observed.shape, anchors[:, 2], variant.EXTENT)
    spec = ModelSpec(layout, polarity, settings.mask_types, settings.mask_size, *saturation_levels(observed))
    programs = programs_for(settings.model, spec)
    sites, guide = programs.sites, programs.guide
    fixed = _fixed_appearance(variant, settings, appearance_source, sites, guide)
    if warm_start is not None:
        init_params = dict(warm_start.params)
    else:
        init_values = variant.initial_values(observed, candidates, background, spec, init_key, fixed or None)
        init_params = guide.initial_params(init_values, GUIDE_INIT_SCALE)
    init_params.update(guide.initial_params(fixed, FROZEN_SCALE))
    per_droplet = [name for name, site in sites.items() if site.per_droplet]
    if fixed:
        reuse = fit_with_fixed_appearance(
            programs.evaluate,
            init_params,
            per_droplet,
            observed,
            anchors,
            active,
            spec,
            guide,
            variant,
            max_iterations=settings.steps,
            add=settings.droplets == 0,
            drawn_ratio=None if warm_start is None else warm_start.warm_start.drawn_ratio,
            progress=progress,
            stop=stop,
            started=started,
        )
        run = reuse.run
    else:
        run = _run_svi(
            programs,
            settings,
            init_params,
            observed,
            anchors,
            active,
            spec,
            svi_key,
            warm=warm_start is not None,
            progress=progress,
            stop=stop,
            started=started,
        )
    params, anchors, active, status, done = run.params, run.anchors, run.active, run.status, run.steps_done
    fitted = time.perf_counter()

    observed_j, anchors_j = jnp.asarray(observed), jnp.asarray(anchors)
    # A reuse fit ends evaluated at its parameters, with the Jacobian of its last iteration.
    evaluation = (
        reuse.evaluation if fixed else programs.evaluate(params, observed_j, anchors_j, jnp.asarray(active), spec)
    )
    values = {k: np.asarray(v) for k, v in evaluation.values.items()}
    locs = {name: params[f"{name}_auto_loc"] for name in per_droplet}
    evaluate_at = at_locs(programs.evaluate, params, observed_j, anchors_j, spec)
    prior_curvature = {name: np.asarray(curvature) for name, curvature in evaluation.prior_curvature.items()}
    noise_sd, radius_px = float(values["noise"]), variant.radius_px(values)
    if fixed:
        sds, p_exists = reuse_uncertainty(
            reuse, evaluate_at, locs, prior_curvature, observed, noise_sd, radius_px, layout
        )
        # Levenberg-Marquardt found the mode; the posterior's spread is the Laplace one.
        params.update({f"{name}_auto_scale": sd.astype(np.float32) for name, sd in sds.items()})
    else:
        sds, p_exists = droplet_uncertainty(
            evaluate_at, locs, prior_curvature, observed, active, layout, noise_sd, radius_px
        )
    uncertainty = _constrained_sds(guide, locs, sds)
    uncertainty["p_exists"] = p_exists
    reconstruction = np.asarray(evaluation.reconstruction, np.float32)
    discrepancy = model_discrepancy(settings.model)
    columns = variant.droplet_columns(values, uncertainty, spec)
    droplets = with_model_discrepancy(
        _droplet_table(columns, active, factor, origin), discrepancy.per_radius, discrepancy.radius_power
    )
    drawn_ratio = np.where(active > 0, np.asarray(columns["radius"]) / radius_px, np.nan).astype(np.float32)
    # Blur is measured where it is sharpest: in the uploaded image, not the downscaled one.
    droplets = with_edge_blur(droplets, extract_channel(image, settings.channel).mean(axis=2))
    count = count_of_table(droplets, discrepancy.count)
    shown = {name: np.asarray(columns[name])[active > 0] for name in ("x", "y", "radius", "p_exists")}
    verdict = judge_fit(
        observed,
        reconstruction,
        np.stack([shown["x"], shown["y"]], axis=1),
        shown["radius"],
        shown["p_exists"],
        (MIN_RADIUS_PX, MAX_FIT_RADIUS_PX),
    )
    uncertain = time.perf_counter()
    all_losses = run.losses
    if warm_start is not None:
        all_losses = np.concatenate([warm_start.losses, all_losses])
    parent = warm_start.fit_id if warm_start is not None else start_from.fit_id if start_from is not None else None
    if status != "done" or fit_id is None:
        fit_id = fit_key(image_sha256, settings, parent, None if status == "done" else done)
    appearance = variant.appearance(values, spec)
    finished = time.perf_counter()
    report = FitReport(
        fit_id=fit_id,
        image_sha256=image_sha256,
        settings=settings,
        status=status,
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        steps_done=done,
        total_steps_done=len(all_losses),
        final_loss=run.final_loss,
        rmse=tuple(rmse_per_channel(observed, reconstruction)),
        device=jax_device_description(),
        versions=library_versions(),
        timings=Timings(
            detect_s=round(detected - started, 3),
            compile_s=round(run.first_chunk_s, 3),
            fit_s=round(fitted - detected, 3),
            uncertainty_s=round(uncertain - fitted, 3),
            total_s=round(finished - started, 3),
        ),
        count=count,
        verdict=verdict,
        uncertainty=UncertaintyMethod("laplace", discrepancy.per_radius, discrepancy.count, discrepancy.radius_power),
        candidate_count=int(len(anchors)),
        downscale=factor,
        downscale_choice=None if region.scale is None else region.scale.to_dict(),
        crop_origin=tuple(origin),
        fit_shape=tuple(observed.shape),
        image_shape=tuple(image.shape),
        parent_fit_id=parent,
    )
    return FitResult(
        report=report,
        droplets=droplets,
        observed=observed,
        reconstruction=reconstruction,
        losses=all_losses.astype(np.float32),
        params=params,
        warm_start=WarmStartState(np.asarray(anchors), active, polarity, drawn_ratio),
        appearance=appearance,
    )


def _run_svi(
    programs: Programs,
    settings: FitSettings,
    init_params: dict,
    observed: np.ndarray,
    anchors: np.ndarray,
    active: np.ndarray,
    spec: ModelSpec,
    key,
    *,
    warm: bool,
    progress,
    stop,
    started: float,
) -> OptimiserRun:
    """SVI from ``init_params`` in jitted chunks of ``CHUNK_STEPS`` steps, with droplets switched
    on and off at ``SWITCHING_AT`` fractions of the run (``run_fit``'s arguments)."""
    observed_j, anchors_j = jnp.asarray(observed), jnp.asarray(anchors)
    pixel_noise_sd = images.noise_sd_estimate(observed)
    state = programs.init(
        key,
        observed_j,
        anchors_j,
        jnp.asarray(active),
        spec,
        init_params={k: jnp.asarray(v) for k, v in init_params.items()},
    )
    rates = learning_rates(settings, warm)
    rates = np.pad(rates, (0, -len(rates) % CHUNK_STEPS))
    checkpoints = {int(np.ceil(f * settings.steps / CHUNK_STEPS)) * CHUNK_STEPS for f in SWITCHING_AT}
    losses: list[np.ndarray] = []
    done, status, first_chunk_s = 0, "done", 0.0
    while done < settings.steps:
        if stop is not None and stop.is_set():
            status = "stopped"
            break
        if done in checkpoints:
            state, anchors, active = _switch_droplets(
                programs, state, observed, pixel_noise_sd, anchors, active, spec, settings.droplets == 0
            )
            anchors_j = jnp.asarray(anchors)
        n_steps = min(CHUNK_STEPS, settings.steps - done)
        chunk_started = time.perf_counter()
        state, chunk_losses = programs.run_chunk(
            state, rates[done : done + CHUNK_STEPS], n_steps, observed_j, anchors_j, jnp.asarray(active), spec
        )
        chunk_losses = np.asarray(chunk_losses)[:n_steps]
        if done == 0:
            first_chunk_s = time.perf_counter() - chunk_started
        done += n_steps
        losses.append(chunk_losses)
        if not np.all(np.isfinite(chunk_losses)):
            raise FitError(
                f"the fit diverged (loss became NaN/inf at step {done}); try a smaller learning rate or another seed"
            )
        if progress is not None:
            progress(
                FitProgress(
                    done, settings.steps, float(np.mean(chunk_losses)), time.perf_counter() - started, int(active.sum())
                )
            )
    if status == "done" and settings.droplets == 0:
        # Droplets added at the last checkpoint had no later pruning: a highlight or rim
        # piece taken for a droplet is switched off here, with the duplicates.
        state, anchors, active = _switch_droplets(
            programs, state, observed, pixel_noise_sd, anchors, active, spec, False
        )
    params = {k: np.asarray(v) for k, v in programs.guide_params(state).items()}
    return OptimiserRun(
        params,
        anchors,
        active,
        np.concatenate(losses) if losses else np.zeros(0, np.float32),
        done,
        status,
        first_chunk_s,
        float(np.mean(losses[-1])) if losses else None,
    )


def _fixed_appearance(variant, settings: FitSettings, source: FitResult | None, sites: dict, guide) -> dict:
    """``{site: value}`` of the reused appearance (the source's guide medians), or ``{}`` when
    ``settings`` reuses none. The fit holds them fixed."""
    if settings.appearance_from is None:
        return {}
    if source is None or source.fit_id != settings.appearance_from:
        raise FitError(f"the fit {settings.appearance_from} whose appearance should be reused was not given")
    before = source.settings
    if (before.model, before.mask_types, before.mask_size) != (settings.model, settings.mask_types, settings.mask_size):
        raise FitError("can only reuse the appearance of a fit with the same model, droplet types and mask size")
    fixed = {
        name: np.asarray(guide.transforms[name](jnp.asarray(source.params[f"{name}_auto_loc"])))
        for name in sites
        if variant.is_appearance_site(name) and f"{name}_auto_loc" in source.params
    }
    if not fixed:
        raise FitError(f"the {settings.model} model has no learned appearance to reuse")
    return fixed


def _with_spare_slots(candidates: np.ndarray, spare: bool) -> np.ndarray:
    """``candidates`` ``(n, 4)`` plus inactive slots, up to a ``bucket_size``: for droplets found
    later in the residual when ``spare``, and so that images with similar droplet counts
    share compiled programs.

    Spare slots are sized like the larger candidates so their patches can draw most droplets.
    """
    count = len(candidates) + (
        max(SPARE_SLOTS_MIN, int(np.ceil(SPARE_SLOTS_FRACTION * len(candidates)))) if spare else 0
    )
    slots = np.tile(np.median(candidates, axis=0), (bucket_size(count) - len(candidates), 1))
    slots[:, 2] = np.percentile(candidates[:, 2], 90)
    return np.concatenate([candidates, slots.astype(np.float32)])


def _switch_droplets(
    programs: Programs, state, observed, pixel_noise_sd: float, anchors, active, spec: ModelSpec, add: bool
):
    """``droplet_switching.tidy`` of an SVI ``state``: the new droplets' guide locations are written
    into the optimiser state in place, so Adam's moments and the learning-rate schedule of
    every other parameter carry on."""
    evaluated = programs.evaluate(
        programs.guide_params(state), jnp.asarray(observed), jnp.asarray(anchors), jnp.asarray(active), spec
    )
    params, anchors, active = tidy(
        evaluated,
        optimiser_params(state),
        observed,
        anchors,
        active,
        spec,
        programs.guide,
        programs.variant,
        pixel_noise_sd,
        add,
        prune=True,
    )
    return with_optimiser_state(state, params), anchors, active


def _droplet_log_prior(site: dict, transform, loc) -> jax.Array:
    """``(n,)`` log prior density of each droplet's value of a per-droplet ``site`` in its
    guide's unconstrained space ``loc`` (the Jacobian of the transform included)."""
    event_dim = len(site["fn"].event_shape)
    log_prob = sum_rightmost(site["fn"].log_prob(site["value"]), event_dim)
    log_jacobian = sum_rightmost(
        transform.log_abs_det_jacobian(loc, site["value"]), event_dim - transform.domain.event_dim
    )
    return log_prob + log_jacobian


def _prior_curvature(site: dict, transform, loc) -> jax.Array:
    """Minus the second derivative of a per-droplet ``site``'s log prior density in its
    unconstrained space, for every element of ``loc`` (``(n,)`` or ``(n, k)``). Every model
    gives each element its own prior and an elementwise transform, so the Hessian is
    diagonal and one Hessian-vector product with a vector of ones is that diagonal."""

    def log_density(u):
        value = transform(u)
        return jnp.sum(site["fn"].log_prob(value) + transform.log_abs_det_jacobian(u, value))

    return -jax.jvp(jax.grad(log_density), (loc,), (jnp.ones_like(loc),))[1]


def _constrained_sds(guide: MeanFieldGuide, locs: dict, sds: dict) -> dict:
    """``sd_<site>``: posterior sds in the sites' own units from their unconstrained ``sds``
    at ``locs`` (delta method)."""
    step = 1e-3
    above = guide.constrained({name: locs[name] + step for name in sds})
    below = guide.constrained({name: locs[name] - step for name in sds})
    return {
        f"sd_{name}": np.abs(np.asarray(above[name]) - np.asarray(below[name])) / (2.0 * step) * sd
        for name, sd in sds.items()
    }


def _check_warm_start(warm_start: FitResult, settings: FitSettings, shape: tuple) -> None:
    before = warm_start.settings
    same = (before.model, before.channel, before.mask_types, before.mask_size) == (
        settings.model,
        settings.channel,
        settings.mask_types,
        settings.mask_size,
    )
    if not same or tuple(warm_start.observed.shape) != tuple(shape):
        raise FitError("can only continue a fit with the same image, model, channel, masks and downscale")


def _droplet_table(columns: dict, active: np.ndarray, factor: int, origin: tuple[int, int]) -> pd.DataFrame:
    """Active droplets with positions and lengths converted to pixels of the uploaded image."""
    keep = active > 0
    table = pd.DataFrame({name: np.asarray(value)[keep] for name, value in columns.items()})
    table["x"] = images.to_original_px(table["x"].to_numpy(), factor) + origin[0]
    table["y"] = images.to_original_px(table["y"].to_numpy(), factor) + origin[1]
    for name in ("radius", "sd_x", "sd_y", "sd_radius"):
        if name in table:
            table[name] = table[name] * factor
    return table.sort_values(["y", "x"], kind="stable").reset_index(drop=True)
