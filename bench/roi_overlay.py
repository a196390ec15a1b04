"""Draw a fit's exported ImageJ ROI set, read back with roifile, over its image (docs/roi_overlay.png).

Run from the repository root after a fit, e.g.::

    python -m droplet_core fit ../shared/data/dna_droplets_fluorescence.tif --out /tmp/fluo
    python -m bench.roi_overlay ../shared/data/dna_droplets_fluorescence.tif /tmp/fluo

The ovals are drawn from the ROI files alone (each oval's sub-pixel bounds, ImageJ's
pixel-centre convention undone), so the picture shows what Fiji's ROI manager will show:
the whole image on the left, a crop enlarged 4x on the right.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import roifile
from PIL import Image, ImageDraw

from droplet_core.imaging.images import load_image

ZOOM = 4
CROP_PX = 160
PANEL_PX = 640


def stretched(image: np.ndarray) -> Image.Image:
    """8-bit RGB of ``image`` ``(h, w, 3)``; a dim one (fluorescence) contrast stretched between
    its 1st and 99.8th percentiles."""
    low, high = np.percentile(image, [1.0, 99.8])
    if high > 0.5:
        low, high = 0.0, 1.0
    return Image.fromarray(np.round(np.clip((image - low) / max(high - low, 1e-9), 0, 1) * 255).astype(np.uint8))


def draw_ovals(panel: Image.Image, rois: list, scale: float, origin: tuple[float, float], width: int) -> None:
    draw = ImageDraw.Draw(panel)
    for roi in rois:
        # ImageJ bounds are in pixel edges (a pixel's centre at index + 0.5); the panel's pixel k
        # covers image coordinates origin + k / scale.
        left, top = (roi.xd - origin[0]) * scale, (roi.yd - origin[1]) * scale
        box = [left, top, left + roi.widthd * scale, top + roi.heightd * scale]
        if box[2] < 0 or box[3] < 0 or box[0] > panel.width or box[1] > panel.height:
            continue
        draw.ellipse(box, outline=(255, 64, 160), width=width)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", type=Path)
    parser.add_argument("fit_dir", type=Path, help="output folder of the fit (holds rois.zip)")
    parser.add_argument("--out", type=Path, default=Path("docs/roi_overlay.png"))
    parser.add_argument("--crop", type=int, nargs=2, metavar=("X0", "Y0"), help="top-left of the enlarged crop")
    args = parser.parse_args()

    image = load_image(args.image)
    rois = roifile.roiread(args.fit_dir / "rois.zip")
    height, width = image.shape[:2]
    whole = stretched(image)
    scale = PANEL_PX / max(height, width)
    left_panel = whole.resize((round(width * scale), round(height * scale)), Image.LANCZOS)
    draw_ovals(left_panel, rois, scale, (0.0, 0.0), 1)

    x0, y0 = args.crop if args.crop else ((width - CROP_PX) // 2, (height - CROP_PX) // 2)
    crop = whole.crop((x0, y0, x0 + CROP_PX, y0 + CROP_PX)).resize((CROP_PX * ZOOM, CROP_PX * ZOOM), Image.NEAREST)
    draw_ovals(crop, rois, ZOOM, (float(x0), float(y0)), 2)
    ImageDraw.Draw(left_panel).rectangle(
        [x0 * scale, y0 * scale, (x0 + CROP_PX) * scale, (y0 + CROP_PX) * scale], outline=(255, 255, 0), width=2
    )

    canvas = Image.new("RGB", (left_panel.width + crop.width + 30, max(left_panel.height, crop.height) + 40), "white")
    canvas.paste(left_panel, (10, 30))
    canvas.paste(crop, (left_panel.width + 20, 30))
    ImageDraw.Draw(canvas).text(
        (10, 8),
        f"{args.image.name}: {len(rois)} oval ROIs read back from rois.zip with roifile; right: the yellow "
        f"box at {ZOOM}x",
        fill="black",
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(args.out)
    print(f"{len(rois)} ROIs drawn -> {args.out}")


if __name__ == "__main__":
    main()
