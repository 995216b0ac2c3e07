"""
Creates the Polygons segmentation dataset (our own recipe: the paper published no generator for it).

Each 64x64 gray image holds 1-4 (uniform) filled regular polygons on black. A polygon has
3-8 sides (uniform), a circumradius uniform in [8, 14] pixels, a uniform rotation and one
uniform intensity 128..255 drawn independently of its class; a pixel belongs to it when
its centre lies inside. It is rasterised once (with a random sub-pixel centre) and then
placed at a uniform whole-pixel offset with all its pixels inside the canvas, redrawn
(up to 100 tries, else the polygon is left out, about 1% of them) until none of its
pixels touches an earlier polygon's pixels, diagonals included, so polygons are at least
1 pixel apart. The first polygon always fits. The mask holds sides - 2 (triangle = 1,
..., octagon = 6): only the global shape tells the classes apart.

    python data_scripts/create_polygons.py                      # 10,000 / 1,000 / 1,000 into ./data/polygons
    python data_scripts/create_polygons.py --data-root /tmp/waves_data --train 100 --val 10 --test 10

Writes {train,val,test}_images.npy (uint8 N x 64 x 64), {split}_masks.npy (uint8 N x 64 x 64)
and dataset.json. Same seed, same bytes; rerunning over an identical dataset does nothing.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # so `python data_scripts/...` finds the repo

import numpy as np

from data_scripts import common
from dataset_config import get_info

INFO = get_info("polygons")
SIZE = 64
MAX_POLYGONS = 4
SIDES = (3, 8)  # inclusive
RADIUS = (8.0, 14.0)  # circumradius in pixels: small enough for 4 to fit, large enough to tell 7 from 8 sides
INTENSITY = (128, 255)  # inclusive
TRIES = 100


def rasterise(sides, radius, angle, cy, cx, shape):
    """Boolean map of the pixels (of a grid of the given shape) whose centre lies inside the
    polygon: with vertices in increasing angle, where every edge's cross product is >= 0."""
    py, px = np.mgrid[0:shape[0], 0:shape[1]] + 0.5
    angles = angle + 2 * np.pi * np.arange(sides + 1) / sides  # last vertex = first, closes the polygon
    vy, vx = cy + radius * np.sin(angles), cx + radius * np.cos(angles)
    inside = np.ones(shape, bool)
    for k in range(sides):
        inside &= (vx[k + 1] - vx[k]) * (py - vy[k]) - (vy[k + 1] - vy[k]) * (px - vx[k]) >= 0
    return inside


def dilate(pixels):
    """3x3 dilation: the pixels plus their 8 neighbours."""
    padded = np.pad(pixels, 1)
    return np.logical_or.reduce([padded[dy:dy + SIZE, dx:dx + SIZE] for dy in range(3) for dx in range(3)])


def make_sample(rng):
    """One image (64 x 64), its mask, and {"polygons": [placed polygon, ...], "left_out": n}."""
    image = np.zeros((SIZE, SIZE), np.uint8)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    near = np.zeros((SIZE, SIZE), bool)  # earlier polygons' pixels and their neighbours
    polygons, left_out = [], 0
    for _ in range(rng.integers(1, MAX_POLYGONS + 1)):
        sides = int(rng.integers(SIDES[0], SIDES[1] + 1))
        radius = float(rng.uniform(*RADIUS))
        angle = float(rng.uniform(0, 2 * np.pi))
        intensity = int(rng.integers(INTENSITY[0], INTENSITY[1] + 1))
        # rasterise once around a centre with a random sub-pixel part, cropped to its pixels;
        # the tries then only move it by whole pixels, which keeps them cheap
        span = int(np.ceil(2 * radius)) + 2
        sub_y, sub_x = rng.uniform(0, 1, size=2)
        shape = rasterise(sides, radius, angle, radius + 1 + sub_y, radius + 1 + sub_x, (span, span))
        rows, cols = np.flatnonzero(shape.any(1)), np.flatnonzero(shape.any(0))
        shape = shape[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        h, w = shape.shape
        for _ in range(TRIES):
            y, x = int(rng.integers(SIZE - h + 1)), int(rng.integers(SIZE - w + 1))
            if not (near[y:y + h, x:x + w] & shape).any():
                break
        else:
            left_out += 1
            continue
        pixels = np.zeros((SIZE, SIZE), bool)
        pixels[y:y + h, x:x + w] = shape
        image[pixels] = intensity
        mask[pixels] = sides - 2
        near |= dilate(pixels)
        polygons.append({"sides": sides, "radius": radius, "angle": angle, "intensity": intensity,
                         "cy": float(y - rows[0] + radius + 1 + sub_y), "cx": float(x - cols[0] + radius + 1 + sub_x)})
    return image, mask, {"polygons": polygons, "left_out": left_out}


def main(argv=None):
    parser = common.make_parser(INFO, __doc__)
    args = common.parse_args(parser, argv)
    out_dir = common.output_dir(args, INFO)
    sizes = {"train": args.train, "val": args.val, "test": args.test}
    recipe = {"polygons_per_image": [1, MAX_POLYGONS], "sides": list(SIDES), "circumradius": list(RADIUS),
              "rotation": "uniform 0..2 pi", "intensity": list(INTENSITY),
              "rasterisation": "pixel centre inside the polygon",
              "placement": "rasterised once with a uniform sub-pixel centre, then a uniform whole-pixel offset "
                           "with all pixels inside the canvas; no pixel may touch an earlier polygon's pixels "
                           f"(8-neighbourhood); {TRIES} tries, else left out",
              "class": "sides - 2"}
    files = [f"{s}_{kind}.npy" for s in sizes for kind in ("images", "masks")]
    request = common.describe(INFO, args.seed, sizes, files, recipe)
    if common.already_done(out_dir, request, args.force):
        return out_dir

    arrays, infos, redrawn = common.generate_splits(make_sample, sizes, args.seed, INFO.name)
    counts = {s: np.bincount([len(i["polygons"]) for i in infos[s]], minlength=MAX_POLYGONS + 1)[1:].tolist()
              for s in sizes}
    left_out = {s: sum(i["left_out"] for i in infos[s]) for s in sizes}
    stats = {"redrawn_as_duplicates": redrawn, "images_with_1_to_4_polygons": counts,
             "polygons_left_out": left_out}
    common.write_dataset(out_dir, arrays, request, stats, force=args.force)
    return out_dir


if __name__ == "__main__":
    common.run_cli(main)
