"""The app's session state: every value one page leaves for another, named once.

Pages and ``app`` read and write these through the accessors below instead of spelling
``st.session_state`` keys: what a key holds, who writes it and who reads it is said here.
Keys of a single page's own widgets (``w_*``, ``b_*``) stay with that page.
"""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from droplet_core.settings import FitSettings

# The current image (its store sha256 and the name it was uploaded under), the current fit
# (always one of the current image, or None) and this session's fits, newest first.
IMAGE_SHA = "image_sha"
IMAGE_NAME = "image_name"
FIT_ID = "fit_id"
FIT_HISTORY = "fit_history"
# Fits started on an earlier image, still running: they join the history when done.
BACKGROUND_JOBS = "background_jobs"
# The Image page's choices, which the Fit and Batch pages fit with.
CHANNEL = "channel"
CROP = "crop"
DOWNSCALE = "downscale"
# Why the last upload was refused (Image page).
UPLOAD_ERROR = "upload_error"
# The Fit page's instant detections, kept so that its sliders only filter them.
DETECTIONS = "detect_raw"
# The Fit page's running or last job, as the Fit page shows it.
JOB_ID = "job_id"
JOB_IMAGE_SHA = "job_image_sha"
JOB_NOTICE = "job_notice"
JOB_HANDLED = "job_handled"
# The Fit page's settings as last chosen, which the Batch page starts from.
FIT_CHOICES = "fit_choices"

# Keys that belong to one image: cleared when another image becomes current (with the
# Image page's crop and downscale widgets).
PER_IMAGE_KEYS = (
    CROP,
    "w_crop_on",
    "w_crop_x",
    "w_crop_y",
    "w_downscale",
    DOWNSCALE,
    DETECTIONS,
    JOB_ID,
    JOB_IMAGE_SHA,
    JOB_NOTICE,
    JOB_HANDLED,
)


@dataclass(frozen=True)
class ImageChoices:
    """What the Image page set: the channel to fit, the crop ``(x0, y0, x1, y1)`` in pixels
    of the image (or None) and the downscale (0 = automatic)."""

    channel: str = FitSettings.channel
    crop: tuple[int, int, int, int] | None = None
    downscale: int = 0


def image_choices() -> ImageChoices:
    state = st.session_state
    return ImageChoices(state.get(CHANNEL, ImageChoices.channel), state.get(CROP), int(state.get(DOWNSCALE, 0)))


def set_channel(channel: str) -> None:
    st.session_state[CHANNEL] = channel


def set_crop(crop: tuple[int, int, int, int] | None) -> None:
    st.session_state[CROP] = crop


def set_downscale(downscale: int) -> None:
    st.session_state[DOWNSCALE] = int(downscale)


def fit_choices() -> FitSettings:
    """The settings last chosen on the Fit page (defaults before it was opened); the Batch
    page starts from them."""
    return st.session_state.get(FIT_CHOICES) or FitSettings()


def set_fit_choices(settings: FitSettings) -> None:
    st.session_state[FIT_CHOICES] = settings


def upload_error() -> str | None:
    return st.session_state.get(UPLOAD_ERROR)


def set_upload_error(message: str | None) -> None:
    st.session_state[UPLOAD_ERROR] = message


@dataclass(frozen=True)
class JobDisplay:
    """The job the Fit page shows: its id, the image it fits, how it came about
    (``"new"``, ``"store"`` or ``"continue"``) and the id whose end was already handled."""

    fit_id: str | None = None
    image_sha: str | None = None
    notice: str | None = None
    handled: str | None = None


def job_display() -> JobDisplay:
    state = st.session_state
    return JobDisplay(state.get(JOB_ID), state.get(JOB_IMAGE_SHA), state.get(JOB_NOTICE), state.get(JOB_HANDLED))


def show_job(fit_id: str, image_sha: str, notice: str) -> None:
    """Make the Fit page show the job ``fit_id`` (just submitted) for the image ``image_sha``."""
    st.session_state.update({JOB_ID: fit_id, JOB_IMAGE_SHA: image_sha, JOB_NOTICE: notice, JOB_HANDLED: None})


def forget_job() -> None:
    st.session_state[JOB_ID] = None


def mark_job_handled(fit_id: str) -> None:
    st.session_state[JOB_HANDLED] = fit_id


def detections() -> dict | None:
    return st.session_state.get(DETECTIONS)


def set_detections(record: dict) -> None:
    st.session_state[DETECTIONS] = record
