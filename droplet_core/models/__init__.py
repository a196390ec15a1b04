"""The model variants, one module each; every module offers the same functions:

``EXTENT`` (how far a droplet reaches, in radii), ``model(observed, anchors, active, spec)``
(the numpyro model, recording ``reconstruction`` and per-droplet ``strength``),
``initial_values``, ``droplet_columns``, ``appearance`` and ``is_appearance_site``.
"""

from droplet_core.models import gaussian, neural, templates

VARIANTS = {"gaussian": gaussian, "templates": templates, "neural": neural}
