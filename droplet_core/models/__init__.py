"""The model variants, one module each, all implementing ``Variant``.

A variant's module is found through ``droplet_core.variants`` (``register_variant`` adds
one); the fit engine, the droplet count and the uncertainty use nothing of it but what
``Variant`` names.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from droplet_core.models.common import ModelSpec


class Variant(Protocol):
    """What a model variant's module offers.

    Attributes and functions
    ------------------------
    EXTENT : how far a droplet reaches, in radii (sizes its rendering patches).
    model(observed, anchors, active, spec) : the numpyro model of the ``(h, w, c)``
        ``observed`` channel(s), with ``anchors`` ``(n, 3)`` detector x, y, radius (fit px)
        and ``active`` ``(n,)`` droplet slots switched on; per droplet latent sites ``x``,
        ``y`` (fit px) in a plate named ``"droplets"``, and deterministic sites
        ``reconstruction`` ``(h, w, c)`` and ``strength`` ``(n,)`` (each droplet's
        strongest effect on the image, channel units).
    initial_values(observed, candidates, background, spec, key, appearance) : ``{site: value}``
        to start from, given detector ``candidates`` ``(n, 4)`` x, y, radius, contrast (fit px),
        the ``(c,)`` ``background`` between them (``common.background_level``) and a reused
        ``appearance`` (``{site: value}`` held fixed, or None).
    added_droplet_values(peaks, values, active) : ``{site: (k, ...)}`` starting values, other
        than ``x`` and ``y``, of droplets switched on at residual ``peaks`` ``(k, 4)``, given
        the fit's current ``values`` and ``active`` mask.
    radius_px(values) : ``(n,)`` each droplet's radius in fit px.
    drawn_radius_px(values) : ``(n,)`` radius in fit px of each droplet as drawn (where its
        drawing reaches; ``radius_px`` for a variant whose droplets end at their radius).
    droplet_columns(values, uncertainty, spec) : the droplet table's columns (fit px): ``x``,
        ``y``, ``radius``, the variant's own, then ``sd_x``, ``sd_y``, ``sd_radius`` and
        ``p_exists`` from ``uncertainty``.
    is_appearance_site(name) : whether a latent site is part of the learned droplet look
        (held fixed when a look is reused).
    appearance(values, spec) : the learned look for the gallery and for reuse (``{}`` if none).
    """

    EXTENT: float

    def model(self, observed, anchors, active, spec: ModelSpec) -> None: ...

    def initial_values(
        self, observed, candidates, background, spec: ModelSpec, key, appearance: dict | None = None
    ) -> dict: ...

    def added_droplet_values(self, peaks: np.ndarray, values: dict, active: np.ndarray) -> dict: ...

    def radius_px(self, values: dict) -> np.ndarray: ...

    def drawn_radius_px(self, values: dict) -> np.ndarray: ...

    def droplet_columns(self, values: dict, uncertainty: dict, spec: ModelSpec) -> dict: ...

    def is_appearance_site(self, name: str) -> bool: ...

    def appearance(self, values: dict, spec: ModelSpec) -> dict: ...
