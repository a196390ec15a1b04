"""The content-addressed fit store: keys, round trips, hostile ids, crashes and races."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from droplet_core import fit_ids as fit_ids_module
from droplet_core.fit_ids import CODE_VERSION, fit_key, is_valid_fit_id
from droplet_core.results import FitReport, FitResult, WarmStartState
from droplet_core.service import store as store_module
from droplet_core.service.store import FitStore, StoreError, default_store_root
from droplet_core.settings import FitSettings

IMAGE_SHA = hashlib.sha256(b"test image").hexdigest()
SETTINGS = FitSettings(model="templates", channel="h", steps=20, seed=3)


def make_result(
    settings: FitSettings = SETTINGS,
    image_sha256: str = IMAGE_SHA,
    created: str = "2025-01-02T03:04:05+00:00",
    status: str = "done",
) -> FitResult:
    """A small hand-built FitResult, deterministic so that separate processes build equal ones."""
    fit_id = fit_key(image_sha256, settings)
    rng = np.random.default_rng(0)
    droplets = pd.DataFrame(
        {
            # droplets.csv keeps 4 decimals, so the truth has 4 decimals too.
            "x": np.round(rng.uniform(0, 40, 5), 4),
            "y": np.round(rng.uniform(0, 30, 5), 4),
            "radius": np.round(rng.uniform(1, 5, 5), 4),
            "composition_0": np.round(rng.uniform(0, 1, 5), 4),
        }
    )
    observed = rng.uniform(0, 1, (30, 40, 1)).astype(np.float32)
    return FitResult(
        report=FitReport(
            fit_id=fit_id,
            image_sha256=image_sha256,
            settings=settings,
            status=status,
            created=created,
            steps_done=settings.steps,
            total_steps_done=settings.steps,
            final_loss=1.0,
            rmse=(0.05,),
        ),
        droplets=droplets,
        observed=observed,
        reconstruction=(observed * 0.9).astype(np.float32),
        losses=np.linspace(10, 1, settings.steps, dtype=np.float32),
        params={"x_auto_loc": rng.normal(size=5).astype(np.float32), "bg_auto_loc": np.float32(0.2)},
        warm_start=WarmStartState(rng.uniform(0, 30, (5, 3)).astype(np.float32), np.ones(5, np.float32), -1.0),
        appearance={"masks": rng.uniform(0, 1, (6, 15, 15)).astype(np.float32)},
    )


def assert_same_result(loaded: FitResult, expected: FitResult) -> None:
    assert loaded.fit_id == expected.fit_id
    assert loaded.image_sha256 == expected.image_sha256
    assert loaded.settings == expected.settings
    assert loaded.report == expected.report
    pd.testing.assert_frame_equal(loaded.droplets, expected.droplets)
    for name in WarmStartState._fields:
        np.testing.assert_array_equal(getattr(loaded.warm_start, name), getattr(expected.warm_start, name))
    for name in ("observed", "reconstruction", "losses"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(expected, name))
        assert getattr(loaded, name).dtype == getattr(expected, name).dtype
    for name in ("params", "appearance"):
        loaded_dict, expected_dict = getattr(loaded, name), getattr(expected, name)
        assert loaded_dict.keys() == expected_dict.keys()
        for key in expected_dict:
            np.testing.assert_array_equal(loaded_dict[key], expected_dict[key])


def entries(store: FitStore) -> list[str]:
    return sorted(path.name for path in (store.root / "fits").iterdir())


# -- fit_key ---------------------------------------------------------------------------


def test_fit_key_is_deterministic_32_hex():
    key = fit_key(IMAGE_SHA, SETTINGS)
    assert key == fit_key(IMAGE_SHA, FitSettings(model="templates", channel="h", steps=20, seed=3))
    assert is_valid_fit_id(key)


@pytest.mark.parametrize(
    "change",
    [
        {"model": "gaussian"},
        {"channel": "v"},
        {"downscale": 2},
        {"droplets": 100},
        {"steps": 21},
        {"learning_rate": 0.01},
        {"seed": 4},
        {"mask_types": 5},
        {"mask_size": 11},
        {"crop": (0, 0, 10, 10)},
    ],
)
def test_fit_key_changes_with_every_setting(change):
    changed = FitSettings.from_dict({**SETTINGS.to_dict(), **change})
    assert fit_key(IMAGE_SHA, changed) != fit_key(IMAGE_SHA, SETTINGS)


def test_fit_key_changes_with_image_parent_and_stop():
    keys = {
        fit_key(IMAGE_SHA, SETTINGS),
        fit_key(hashlib.sha256(b"other").hexdigest(), SETTINGS),
        fit_key(IMAGE_SHA, SETTINGS, parent_fit_id="0" * 32),
        fit_key(IMAGE_SHA, SETTINGS, stopped_at_step=10),
        fit_key(IMAGE_SHA, SETTINGS, stopped_at_step=11),
    }
    assert len(keys) == 5


def test_fit_key_includes_code_version(monkeypatch):
    before = fit_key(IMAGE_SHA, SETTINGS)
    monkeypatch.setattr(fit_ids_module, "CODE_VERSION", CODE_VERSION + "x")
    assert fit_key(IMAGE_SHA, SETTINGS) != before


@pytest.mark.parametrize("text", ["a" * 32, "0123456789abcdef" * 2])
def test_valid_fit_ids(text):
    assert is_valid_fit_id(text)


@pytest.mark.parametrize("text", ["A" * 32, "a" * 31, "a" * 33, "g" * 32, "a" * 32 + "\n", None, 5, b"a" * 32])
def test_invalid_fit_ids(text):
    assert not is_valid_fit_id(text)


def test_default_store_root(monkeypatch, tmp_path):
    monkeypatch.delenv("DROPLET_STORE", raising=False)
    assert default_store_root() == Path(".droplet-store")
    monkeypatch.setenv("DROPLET_STORE", str(tmp_path / "elsewhere"))
    assert default_store_root() == tmp_path / "elsewhere"
    monkeypatch.chdir(tmp_path)
    assert FitStore(root=None).root == (tmp_path / "elsewhere").resolve()


# -- fits ------------------------------------------------------------------------------


def test_save_load_round_trip_survives_restart(tmp_path):
    result = make_result()
    store = FitStore(tmp_path)
    assert not store.has(result.fit_id)
    path = store.save(result)
    assert path == store.fit_dir(result.fit_id) == tmp_path.resolve() / "fits" / result.fit_id
    assert sorted(p.name for p in path.iterdir()) == ["arrays.npz", "droplets.csv", "fit.json", "reconstruction.png"]
    assert store.has(result.fit_id)
    assert_same_result(store.load(result.fit_id), result)

    restarted = FitStore(tmp_path)
    assert restarted.has(result.fit_id)
    assert_same_result(restarted.load(result.fit_id), result)


def test_saving_twice_keeps_one_entry(tmp_path):
    store = FitStore(tmp_path)
    result = make_result()
    assert store.save(result) == store.save(result)
    assert entries(store) == [result.fit_id]
    assert list((store.root / ".tmp").iterdir()) == []


def test_unknown_fit_raises(tmp_path):
    store = FitStore(tmp_path)
    with pytest.raises(StoreError, match="no stored fit with id"):
        store.load("0" * 32)
    with pytest.raises(StoreError, match="no stored fit with id"):
        store.fit_dir("0" * 32)


HOSTILE_IDS = [
    "../../etc/passwd",
    "..",
    ".",
    "",
    "A" * 32,
    "a" * 31,
    "a" * 33,
    "/" + "a" * 31,
    "a" * 32 + "/..",
    None,
    7,
]


@pytest.mark.parametrize("fit_id", HOSTILE_IDS)
def test_malformed_ids_are_refused_before_any_path(tmp_path, monkeypatch, fit_id):
    store = FitStore(tmp_path / "store")

    def no_paths(*args, **kwargs):
        raise AssertionError("built a path from a malformed id")

    monkeypatch.setattr(store_module.FitStore, "_inside", no_paths)
    for method in (store.has, store.load, store.fit_dir):
        with pytest.raises(StoreError, match="malformed fit id"):
            method(fit_id)


def test_entry_linking_outside_the_store_is_refused(tmp_path):
    store = FitStore(tmp_path / "store")
    outside = tmp_path / "outside"
    FitStore(outside).save(make_result())
    fit_id = make_result().fit_id
    (store.root / "fits" / fit_id).symlink_to(outside / "fits" / fit_id)
    with pytest.raises(StoreError, match="outside the store"):
        store.load(fit_id)


def test_unreadable_entry_raises_store_error(tmp_path):
    store = FitStore(tmp_path)
    result = make_result()
    store.save(result)
    (store.fit_dir(result.fit_id) / "arrays.npz").write_bytes(b"not a zip")
    with pytest.raises(StoreError, match=f"stored fit {result.fit_id} is unreadable: ") as error:
        store.load(result.fit_id)
    assert "\n" not in str(error.value)


def test_failure_mid_write_leaves_no_entry(tmp_path, monkeypatch):
    store = FitStore(tmp_path)
    result = make_result()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(store_module.np, "savez", crash)
    with pytest.raises(OSError, match="disk full"):
        store.save(result)
    assert entries(store) == []
    assert list((store.root / ".tmp").iterdir()) == []
    assert not store.has(result.fit_id)


def test_leftover_work_dir_of_a_killed_process_is_ignored(tmp_path):
    store = FitStore(tmp_path)
    result = make_result()
    # What a process killed just before its rename leaves: a complete copy under .tmp/.
    FitStore(tmp_path / "scratch").save(result)
    (tmp_path / "scratch" / "fits" / result.fit_id).rename(store.root / ".tmp" / f"{result.fit_id}-killed")
    assert not store.has(result.fit_id)
    assert store.list_fits() == []
    store.save(result)
    assert entries(store) == [result.fit_id]


def test_save_refuses_results_it_could_not_load_back(tmp_path):
    store = FitStore(tmp_path)
    good = make_result()
    bad_results = [
        replace(good, report=replace(good.report, fit_id="not-an-id")),
        replace(good, report=replace(good.report, created="yesterday")),
        replace(good, params={"nested": {"a": 1}}),
    ]
    for bad in bad_results:
        with pytest.raises(ValueError):
            store.save(bad)
    assert entries(store) == []
    assert list((store.root / ".tmp").iterdir()) == []


def test_concurrent_saves_in_threads_leave_one_entry(tmp_path):
    store = FitStore(tmp_path)
    result = make_result()
    barrier = threading.Barrier(6)
    errors = []

    def save():
        barrier.wait()
        try:
            store.save(result)
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=save) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert entries(store) == [result.fit_id]
    assert list((store.root / ".tmp").iterdir()) == []
    assert_same_result(store.load(result.fit_id), result)


def _save_in_process(root: str, barrier) -> None:
    result = make_result()
    store = FitStore(root)
    barrier.wait()
    store.save(result)


@pytest.mark.slow
def test_concurrent_saves_in_processes_leave_one_entry(tmp_path):
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    processes = [context.Process(target=_save_in_process, args=(str(tmp_path), barrier)) for _ in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
    assert [process.exitcode for process in processes] == [0, 0]
    store = FitStore(tmp_path)
    result = make_result()
    assert entries(store) == [result.fit_id]
    assert list((store.root / ".tmp").iterdir()) == []
    assert_same_result(store.load(result.fit_id), result)


def _save_until_killed(root: str, writing) -> None:
    """Save a fit whose arrays.npz is written half and then hangs (until the process is killed)."""
    import time

    def write_half_then_hang(path, *args, **kwargs):
        Path(path).write_bytes(b"PK\x03\x04 half an archive")
        writing.set()
        time.sleep(120)

    store_module.np.savez = write_half_then_hang
    FitStore(root).save(make_result())


@pytest.mark.slow
def test_process_killed_mid_write_leaves_no_entry(tmp_path):
    context = multiprocessing.get_context("spawn")
    writing = context.Event()
    process = context.Process(target=_save_until_killed, args=(str(tmp_path), writing))
    process.start()
    try:
        assert writing.wait(timeout=60), "the saving process never started writing"
    finally:
        process.kill()
        process.join(timeout=30)
    store = FitStore(tmp_path)
    result = make_result()
    assert entries(store) == [] and not store.has(result.fit_id) and store.list_fits() == []
    assert len(list((store.root / ".tmp").iterdir())) == 1  # the killed writer's work directory, ignored
    store.save(result)
    assert_same_result(store.load(result.fit_id), result)


def test_list_fits_newest_first_skipping_unreadable(tmp_path):
    store = FitStore(tmp_path)
    made = {
        created: make_result(settings=FitSettings(seed=seed), created=created)
        for seed, created in enumerate(
            ["2025-03-01T00:00:00+00:00", "2025-05-01T00:00:00Z", "2025-04-01T12:00:00+02:00"]
        )
    }
    for result in made.values():
        store.save(result)
    broken = make_result(settings=FitSettings(seed=99))
    store.save(broken)
    (store.fit_dir(broken.fit_id) / "fit.json").write_text("{truncated")
    (store.root / "fits" / "not-a-fit").mkdir()

    listed = [report.fit_id for report in store.list_fits()]
    expected = [
        made[c].fit_id for c in ["2025-05-01T00:00:00Z", "2025-04-01T12:00:00+02:00", "2025-03-01T00:00:00+00:00"]
    ]
    assert listed == expected
    assert store.list_fits()[0] == made["2025-05-01T00:00:00Z"].report


# -- images ----------------------------------------------------------------------------


def test_images_round_trip_and_are_idempotent(tmp_path):
    store = FitStore(tmp_path)
    data = b"\x89PNG fake image bytes"
    sha = store.save_image(data)
    assert sha == hashlib.sha256(data).hexdigest()
    assert store.save_image(bytearray(data)) == sha
    assert FitStore(tmp_path).image_bytes(sha) == data
    assert sorted(p.name for p in (store.root / "images").iterdir()) == [sha]
    assert list((store.root / ".tmp").iterdir()) == []


@pytest.mark.parametrize("sha", ["../../etc/passwd", "A" * 64, "a" * 63, "a" * 65, "", None])
def test_malformed_image_hash_is_refused(tmp_path, sha):
    with pytest.raises(StoreError, match="malformed image sha256"):
        FitStore(tmp_path).image_bytes(sha)


def test_unknown_image_raises(tmp_path):
    with pytest.raises(StoreError, match="no stored image"):
        FitStore(tmp_path).image_bytes("0" * 64)


def test_stale_work_dirs_are_removed_on_open(tmp_path):
    store = FitStore(tmp_path)
    stale, fresh = store.root / ".tmp" / "stale-entry", store.root / ".tmp" / "fresh-entry"
    for folder in (stale, fresh):
        folder.mkdir()
        (folder / "fit.json").write_text("{}")
    os.utime(stale, (0, 0))
    FitStore(tmp_path)
    assert sorted(p.name for p in (store.root / ".tmp").iterdir()) == ["fresh-entry"]


def test_losing_the_rename_race_keeps_the_winner(tmp_path, monkeypatch):
    store = FitStore(tmp_path)
    result = make_result()
    real_rename = os.rename
    winner_paths = []

    def other_writer_wins_first(source, target):
        monkeypatch.setattr(store_module.os, "rename", real_rename)
        winner_paths.append(FitStore(tmp_path).save(result))  # lands between our check and rename
        real_rename(source, target)

    monkeypatch.setattr(store_module.os, "rename", other_writer_wins_first)
    assert store.save(result) == winner_paths[0]
    assert entries(store) == [result.fit_id]
    assert list((store.root / ".tmp").iterdir()) == []
    assert_same_result(store.load(result.fit_id), result)


def test_entries_written_before_the_typed_report_load_with_their_warm_start(tmp_path):
    """Older entries kept the warm-start state among the params and a fit.json without the
    count or the verdict: they still load, and still continue."""
    store = FitStore(tmp_path)
    result = make_result()
    store.save(result)
    entry = store.fit_dir(result.fit_id)
    with np.load(entry / "arrays.npz") as archive:
        arrays = {name: archive[name] for name in archive.files}
    legacy = {name: value for name, value in arrays.items() if not name.startswith("warm_start/")}
    legacy.update(
        {
            "params/_anchors": arrays["warm_start/anchors"],
            "params/_active": arrays["warm_start/active"],
            "params/_polarity": arrays["warm_start/polarity"],
        }
    )
    np.savez(entry / "arrays.npz", **legacy)
    record = {
        k: v for k, v in result.report.to_dict().items() if k not in ("total_steps_done", "verdict", "crop_origin")
    }
    (entry / "fit.json").write_text(json.dumps(record))

    loaded = store.load(result.fit_id)
    assert loaded.params.keys() == result.params.keys()
    np.testing.assert_array_equal(loaded.warm_start.anchors, result.warm_start.anchors)
    assert loaded.warm_start.polarity == -1.0
    assert loaded.report.total_steps_done == loaded.report.steps_done and loaded.report.verdict is None
