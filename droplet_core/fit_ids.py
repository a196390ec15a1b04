"""Fit ids: the content key of a fit (image hash + settings + where it continued from), and
the patterns of ids and image hashes that arrive in links and file names."""

from __future__ import annotations

import hashlib
import json
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from droplet_core.settings import FitSettings

# Part of every fit key: bump it when the model maths or the output format change, so
# fits made by older code are recomputed instead of served.
# 14: residual peaks on any droplet's rim refused; faint droplets kept; two-size fits redone at the large scale
# 17: outlines of droplets of 2.5 px and more fitted without inner features; one background per fit
# 18: droplets pruned against the smaller of the residual's spread and the pixel noise
# 19: an outline's edge is a step of 0.45 of the look's typical largest one, not 0.5
# 20: a doubtful blob around an all but certain droplet a quarter its size or more is a cluster
# 21: ... or 0.15 of its size or more
# 22: a time-lapse frame starts its droplet switching from the outline ratios of the previous
#     frame's table
# 23: the model discrepancy of the intervals grows with a calibrated power of the radius
# 24: a sure detection outside its level's radius band starts the fit where no level saw its
#     droplet (it does not set the scale)
# 25: a time-lapse frame starts droplets under 2 fit px at their detections in that frame
# 26: residual peaks of 3.5 noise sds are missed droplets (was 6); a two-size fit that is
#     not judged good is compared with the fit at the large ones' scale
# 27: the verdict's residual spots on the droplets found make a fit partial, not failed
CODE_VERSION = "27"

FIT_ID_PATTERN = re.compile(r"[0-9a-f]{32}")
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")


def is_valid_fit_id(text: object) -> bool:
    """Whether ``text`` is a string of exactly 32 lowercase hex characters."""
    return isinstance(text, str) and FIT_ID_PATTERN.fullmatch(text) is not None


def is_valid_sha256(text: object) -> bool:
    """Whether ``text`` is a string of exactly 64 lowercase hex characters."""
    return isinstance(text, str) and SHA256_PATTERN.fullmatch(text) is not None


def fit_key(
    image_sha256: str,
    settings: FitSettings,
    parent_fit_id: str | None = None,
    stopped_at_step: int | None = None,
) -> str:
    """The store key of a fit: 32 hex characters of a sha256 over everything that decides it.

    Parameters
    ----------
    image_sha256 : sha256 hex of the image bytes as uploaded.
    settings : the fit's settings.
    parent_fit_id : id of the fit it was warm-started from, if any.
    stopped_at_step : for a fit stopped early, the steps it completed. A stopped fit gets
        its own key, so a later identical request recomputes the full fit instead of being
        served the partial one.

    Returns
    -------
    str
        32 lowercase hex characters (matches ``FIT_ID_PATTERN``).
    """
    payload = {
        "code_version": CODE_VERSION,
        "image_sha256": image_sha256,
        "settings": settings.to_dict(),
        "parent_fit_id": parent_fit_id,
        "stopped_at_step": stopped_at_step,
    }
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32]
