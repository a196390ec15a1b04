"""App tests of what one session sees: state that follows the image, fits private to the
session, the fit's verdict and the honest count, images shown with their contrast stretched.

Each test runs real short fits through the Fit page (AppTest cannot wait for worker
threads, so the helpers re-run the script until the job has ended). The store is the
session-wide temporary folder of conftest.py, shared by every AppTest session here, as
one server's sessions share it.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy import ndimage
from test_app import figure, metric, new_app, open_app, run_fit_page, texts

from droplet_core.measurements.counting import count_of_table
from droplet_core.service.store import FitStore
from droplet_core.synthetic.scenes import SceneSettings, encode_png, make_scene

pytestmark = pytest.mark.slow  # drives the app with AppTest after real fits

SCENE_NAME = "emulsion-A.png"


def scene_png(seed: int = 4) -> bytes:
    return encode_png(make_scene(seed, SceneSettings(width_px=200, height_px=160, n_droplets=250))[0])


def noise_png(blotch_px: float = 0.0) -> bytes:
    """Grey noise, smoothed into blotches of about ``blotch_px`` (a texture with no droplets)."""
    rng = np.random.default_rng(0)
    noise = ndimage.gaussian_filter(rng.normal(0.0, 1.0, (120, 160)), blotch_px)
    grey = np.clip(128 + 30 * noise / noise.std(), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(np.repeat(grey[..., None], 3, axis=2)).save(buffer, "PNG")
    return buffer.getvalue()


def upload(at, name: str, data: bytes) -> None:
    at.switch_page("pages/image.py").run()
    at.file_uploader(key="upload").set_value((name, data, "image/png"))
    at.run()
    assert not at.exception and not at.error, texts(at.error)


def sidebar_text(at) -> str:
    return " ".join(str(m.value) for m in at.sidebar.markdown)


def test_state_follows_the_image_demo_fit_upload_fit_back():
    at = open_app()
    run_fit_page(at)
    demo_fit = at.session_state["fit_id"]
    assert "demo scene" in sidebar_text(at)

    # Another image: the demo's fit is no longer current anywhere, but stays in the session's list.
    upload(at, SCENE_NAME, scene_png())
    assert metric(at, "Size") == "200 × 160 px"
    assert SCENE_NAME in sidebar_text(at) and "none yet for this image" in sidebar_text(at)
    assert at.selectbox(key="w_downscale").value == 0
    assert "measures the droplets' size in this 200 x 160 region" in " ".join(texts(at.caption))
    assert at.session_state["fit_id"] is None and demo_fit in at.session_state["fit_history"]
    at.switch_page("pages/fit.py").run()
    assert not at.exception
    assert not [c for c in at.get("plotly_chart") if c.key == "fit_overlay"]
    assert not [b for b in at.button if b.label == "Fit longer"]
    caption = " ".join(texts(at.caption))
    assert (
        SCENE_NAME in caption
        and "200 × 160 px" in caption
        and "downscale automatic (from the droplets' size)" in caption
    )
    at.switch_page("pages/results.py").run()
    assert any("No fit yet" in i for i in texts(at.info)), texts(at.info)

    # Its own fit: current, named by the file name, for the new image.
    run_fit_page(at)
    scene_fit = at.session_state["fit_id"]
    assert scene_fit != demo_fit
    assert FitStore().load(scene_fit).image_sha256 == at.session_state["image_sha"]
    assert SCENE_NAME in sidebar_text(at)
    at.switch_page("pages/results.py").run()
    assert any(SCENE_NAME in c and "templates" in c for c in texts(at.caption)), texts(at.caption)

    # Back to the demo: its fit is current again; both fits are listed for comparison.
    at.switch_page("pages/image.py").run()
    next(b for b in at.button if b.label == "Use the demo scene").click().run()
    assert metric(at, "Size") == "500 × 400 px"
    assert at.session_state["fit_id"] == demo_fit
    assert "demo scene" in sidebar_text(at)
    at.switch_page("pages/compare.py").run()
    assert not at.exception and not at.error, texts(at.error)
    options = at.multiselect(key="w_compare").options
    assert len(options) == 2 and any(SCENE_NAME in o for o in options) and any("demo scene" in o for o in options)


def test_fits_are_private_to_a_session_until_a_link_is_opened():
    owner = open_app()
    upload(owner, SCENE_NAME, scene_png())
    run_fit_page(owner)
    fit_id = owner.session_state["fit_id"]

    other = open_app()
    other.switch_page("pages/compare.py").run()
    assert not other.exception
    assert any("no fits yet" in i for i in texts(other.info)), texts(other.info)
    run_fit_page(other, steps=50, seed=7)  # its own fit of the demo (the least effort: its privacy is the point)
    other.switch_page("pages/fit.py").run()
    assert other.selectbox(key="w_appearance_from").options == ["— learn the look from this image —"] + [
        o for o in other.selectbox(key="w_appearance_from").options if "demo scene" in o
    ]
    assert not any(SCENE_NAME in o for o in other.selectbox(key="w_appearance_from").options)

    # A compare link carrying the owner's fit: listed from then on, by its image's file name.
    other.query_params["fits"] = f"{fit_id},{other.session_state['fit_id']}"
    other.switch_page("pages/compare.py").run()
    assert not other.exception and not other.error, texts(other.error)
    chosen = other.multiselect(key="w_compare").value
    assert fit_id in chosen and len(chosen) == 2
    assert any(SCENE_NAME in o for o in other.multiselect(key="w_compare").options)

    # A results link in a new session: the sidebar names the linked fit's image at once.
    linked = new_app()
    linked.query_params["fit"] = fit_id
    linked.switch_page("pages/results.py").run()
    assert not linked.exception and not linked.error, texts(linked.error)
    assert SCENE_NAME in sidebar_text(linked) and "200 × 160 px" in sidebar_text(linked)

    # Unknown ids in a link: an error, and nobody else's fits instead.
    stranger = new_app()
    stranger.query_params["fits"] = "0123456789abcdef0123456789abcdef"
    stranger.switch_page("pages/compare.py").run()
    assert stranger.error and any("no fits yet" in i for i in texts(stranger.info))


def test_results_show_the_verdict_and_one_count():
    at = open_app()
    upload(at, SCENE_NAME, scene_png())
    run_fit_page(at)
    result = FitStore().load(at.session_state["fit_id"])
    at.switch_page("pages/results.py").run()
    assert not at.exception and not at.error, texts(at.error)
    assert any(s.startswith("**Good fit.**") for s in texts(at.success)), texts(at.success)
    count = count_of_table(result.droplets)
    assert metric(at, "Droplets") == str(result.report.count.count) == str(count.count)
    assert count.low <= count.count <= count.high
    assert metric(at, "Error vs. contrast") == f"{result.report.verdict.relative_rmse:.0%}"
    table = at.dataframe[0].value
    assert len(table) == len(result.droplets)
    assert list(table["likely"]) == list(result.droplets["p_exists"] >= 0.5)


def points(trace: dict) -> int:
    """Number of points of a Plotly trace (plain list, or binary-encoded array)."""
    x = trace["x"]
    return len(base64.b64decode(x["bdata"])) // np.dtype(x["dtype"]).itemsize if isinstance(x, dict) else len(x)


def test_pure_noise_is_never_a_good_fit_and_loses_nothing():
    at = open_app()
    run_fit_page(at)
    demo_fit = at.session_state["fit_id"]
    upload(at, "noise.png", noise_png())
    run_fit_page(at)
    # Either no candidates at all, or a fit that says it explains nothing: never a success.
    said = texts(at.error)
    assert any("no droplet candidates found" in e or "did not explain the image" in e for e in said), said
    assert not any("Good fit" in s for s in texts(at.success)) and demo_fit in at.session_state["fit_history"]


def test_a_failed_fit_says_so_on_fit_and_results_pages():
    at = open_app()
    # Blotches of 2 px: the detector takes finer ones (1-1.5 px) for faint tiny droplets and the
    # fit then explains three quarters of the texture, a "partial" fit rather than a failed one.
    upload(at, "blotches.png", noise_png(blotch_px=2.0))
    run_fit_page(at)
    assert any("did not explain the image" in e for e in texts(at.error)), texts(at.error)
    assert any("channel" in e for e in texts(at.error))
    at.switch_page("pages/results.py").run()
    assert any("did not explain the image" in e for e in texts(at.error)), texts(at.error)
    result = FitStore().load(at.session_state["fit_id"])
    assert result.report.verdict.quality == "failed"
    # Doubtful candidates: dashed grey on the picture, unticked in the table, hidden by the slider.
    likely = int((result.droplets["p_exists"] >= 0.5).sum())
    assert likely < len(result.droplets)
    names = [trace.get("name") for trace in figure(at, "overlay")["data"]]
    assert "doubtful (probably not droplets)" in names
    assert int(at.dataframe[0].value["likely"].sum()) == likely
    at.slider(key="w_hide_below").set_value(0.5).run()
    assert points(figure(at, "overlay")["data"][-1]) == likely == len(at.dataframe[0].value)


def _shown_png(at) -> np.ndarray:
    source = figure(at, "image_fig")["data"][0]["source"]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1]))))


def test_dim_16_bit_image_is_shown_stretched_and_the_control_changes_it():
    rng = np.random.default_rng(1)
    dim = (200 + rng.poisson(40, (120, 160))).astype(np.uint16)  # a few hundred of 65535: black as it is
    dim[40:70, 50:80] += 800
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, dim)
    at = open_app()
    at.file_uploader(key="upload").set_value(("dim.tif", buffer.getvalue(), "image/tiff"))
    at.run()
    assert not at.exception and not at.error, texts(at.error)
    shown = _shown_png(at)
    # As stored (/65535) every pixel would be below 5 of 255; stretched, the bright square is white.
    assert shown[40:70, 50:80].mean() > 200 and np.percentile(shown, 75) < 50
    at.sidebar.slider(key="w_display_percentiles").set_value((0.0, 50.0)).run()
    assert not at.exception
    assert np.percentile(_shown_png(at), 75) == 255  # the brighter half of the background is white now


@pytest.mark.parametrize("percentiles", [(0.5, 99.5), (0.0, 100.0)])
def test_display_stretch_maps_percentiles_to_black_and_white(percentiles):
    from droplet_core.imaging.display import stretch_contrast, stretch_limits

    image = np.linspace(0.0, 0.01, 1000).reshape(10, 100, 1)
    low, high = stretch_limits(image, percentiles)
    assert low == pytest.approx(np.percentile(image, percentiles[0]))
    assert high == pytest.approx(np.percentile(image, percentiles[1]))
    shown = stretch_contrast(image, percentiles)
    assert shown.min() == 0.0 and shown.max() == 1.0
    assert float(shown.mean()) == pytest.approx(0.5, abs=0.01)  # a ramp stays a ramp
