"""``load_or_fit``, the one route from a fit request to a stored fit, with stand-in fit functions."""

from __future__ import annotations

from dataclasses import replace

import pytest
from test_jobs import IMAGE, IMAGE_SHA, build_result

from droplet_core.service.fit_tasks import FAILED, compute_fit
from droplet_core.service.requests import StoreSaveError, load_or_fit, request_key
from droplet_core.service.store import FitStore
from droplet_core.settings import FitSettings

SETTINGS = FitSettings(steps=40)


class CountingFit:
    """A fit function that returns a complete fit and counts its calls and keyword arguments."""

    def __init__(self) -> None:
        self.calls: list[set[str]] = []

    def __call__(self, image, settings, *, image_sha256, progress=None, stop=None, warm_start=None, **rest):
        self.calls.append(set(rest))
        return build_result(settings, image_sha256, settings.steps, None, "done")


@pytest.fixture
def store(tmp_path):
    return FitStore(tmp_path / "store")


def test_second_identical_request_is_served_from_the_store(store):
    fit = CountingFit()
    first = load_or_fit(IMAGE, IMAGE_SHA, SETTINGS, store, fit_fn=fit)
    second = load_or_fit(IMAGE, IMAGE_SHA, SETTINGS, store, fit_fn=fit)
    assert (first.from_store, second.from_store) == (False, True)
    assert first.result.fit_id == second.result.fit_id == request_key(IMAGE_SHA, SETTINGS)
    assert len(fit.calls) == 1
    assert fit.calls[0] == set()  # no appearance source or start: the fit function is not handed them


def test_appearance_source_is_loaded_from_the_store_and_handed_over(store):
    source = load_or_fit(IMAGE, IMAGE_SHA, SETTINGS, store, fit_fn=CountingFit()).result
    fit = CountingFit()
    reuse = replace(SETTINGS, appearance_from=source.fit_id, steps=5)
    load_or_fit(IMAGE, IMAGE_SHA, reuse, store, fit_fn=fit)
    assert fit.calls == [{"appearance_source"}]


def test_unstorable_result_raises_a_store_save_error_caused_by_the_store(store):
    def fit_without_created(image, settings, *, image_sha256, progress=None, stop=None, warm_start=None):
        result = build_result(settings, image_sha256, settings.steps, None, "done")
        return replace(result, report=replace(result.report, created="not a time"))

    with pytest.raises(StoreSaveError) as raised:
        load_or_fit(IMAGE, IMAGE_SHA, SETTINGS, store, fit_fn=fit_without_created)
    assert isinstance(raised.value.__cause__, ValueError)
    assert not isinstance(raised.value, ValueError)  # not taken for a bad request
    assert store.list_fits() == []


def test_a_bad_request_is_a_message_for_the_user(store):
    def refusing_fit(image, settings, **_):
        raise ValueError("downscale 9 leaves too few pixels")

    outcome, result = compute_fit(IMAGE, IMAGE_SHA, SETTINGS, store, refusing_fit, progress=None, stop=None)
    assert (outcome.status, outcome.error, result) == (FAILED, "downscale 9 leaves too few pixels", None)
