"""
Creates the Tetrominoes segmentation dataset (SPEC section 3).

Each 64x64 RGB image holds 1-5 tetrominoes (uniform) on black. A piece's family is drawn
uniformly from I, O, T, S/Z, J/L (labels 1-5; S vs Z and J vs L by a mirror with
probability 1/2), rotated by a random multiple of 90 degrees, and drawn with 7x7-pixel
cells in a random RGB colour (each channel uniform 0..255, redrawn while all three are
below 32 so no piece is invisible); every cell's 1-pixel border is brightened by
colour // 2, clipped at 255. A piece lies fully inside the canvas at a uniformly drawn
pixel offset whose bounding box holds no pixel of an earlier piece, so pieces never
overlap but may touch (a piece with no such offset, about one image in 20,000, is left
out and counted in dataset.json). The mask holds the label.

    python data_scripts/create_tetrominoes.py                      # 10,000 / 1,000 / 1,000 into ./data/tetrominoes
    python data_scripts/create_tetrominoes.py --data-root /tmp/waves_data --train 100 --val 10 --test 10

Writes {train,val,test}_images.npy (uint8 N x 64 x 64 x 3), {split}_masks.npy (uint8 N x 64 x 64)
and dataset.json. Same seed, same bytes; rerunning over an identical dataset does nothing.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # so `python data_scripts/...` finds the repo

import numpy as np

from data_scripts import common
from dataset_config import get_info

INFO = get_info("tetrominoes")
SIZE = 64
CELL = 7
MIN_BRIGHTEST = 32  # a colour is redrawn while all channels are below this
MAX_PIECES = 5

# the five families as cell grids, in label order (label = index + 1); S and J are mirrored into Z and L
FAMILIES = {
    "I": [[1, 1, 1, 1]],
    "O": [[1, 1], [1, 1]],
    "T": [[1, 1, 1], [0, 1, 0]],
    "S/Z": [[0, 1, 1], [1, 1, 0]],
    "J/L": [[1, 0, 0], [1, 1, 1]],
}
FAMILY_NAMES = list(FAMILIES)
MIRRORED = ("S/Z", "J/L")

# each 7x7 cell: the whole cell in the colour, the outer ring of pixels brightened
CELL_PIXELS = np.ones((CELL, CELL), bool)
CELL_RING = CELL_PIXELS.copy()
CELL_RING[1:-1, 1:-1] = False


def oriented_shapes():
    """(family index, mirrored, quarter turns) -> (pixel mask, ring mask), precomputed once:
    19 distinct shapes, listed under all 5 x 2 x 4 draws so sampling follows the recipe."""
    shapes = {}
    for family, grid in enumerate(FAMILIES.values()):
        for mirror in (False, True):
            for turns in range(4):
                cells = np.rot90(np.fliplr(grid) if mirror else np.array(grid), turns).astype(bool)
                shapes[family, mirror, turns] = (np.kron(cells, CELL_PIXELS), np.kron(cells, CELL_RING))
    return shapes


SHAPES = oriented_shapes()


def random_colour(rng):
    while True:
        colour = rng.integers(0, 256, size=3)
        if colour.max() >= MIN_BRIGHTEST:
            return colour


def free_offsets(occupied, h, w):
    """Flat indices (into a (SIZE-h+1) x (SIZE-w+1) grid) of the offsets whose h x w box
    holds no occupied pixel, from an integral image: one pass instead of a try loop."""
    integral = np.zeros((SIZE + 1, SIZE + 1), np.int32)
    integral[1:, 1:] = occupied.cumsum(0).cumsum(1)
    box = integral[h:, w:] - integral[:-h, w:] - integral[h:, :-w] + integral[:-h, :-w]
    return np.flatnonzero(box == 0)


def make_sample(rng):
    """One image (64 x 64 x 3), its mask, and {"pieces": [placed piece, ...], "left_out": n}."""
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    occupied = np.zeros((SIZE, SIZE), bool)
    pieces, left_out = [], 0
    for _ in range(rng.integers(1, MAX_PIECES + 1)):
        family = int(rng.integers(len(FAMILIES)))
        mirror = bool(rng.integers(2)) if FAMILY_NAMES[family] in MIRRORED else False
        turns = int(rng.integers(4))
        colour = random_colour(rng)
        pixels, ring = SHAPES[family, mirror, turns]
        h, w = pixels.shape
        # drawing uniformly among the free offsets is the same as redrawing a uniform
        # offset until it is free, and it also ends when no offset is free (about one
        # image in 20,000, with 4 earlier pieces): then the piece is left out and counted
        free = free_offsets(occupied, h, w)
        if free.size == 0:
            left_out += 1
            continue
        y, x = divmod(int(free[rng.integers(free.size)]), SIZE - w + 1)
        bright = np.minimum(colour + colour // 2, 255)  # int64: no uint8 wraparound
        box = image[y:y + h, x:x + w]
        box[pixels] = colour
        box[ring] = bright
        mask[y:y + h, x:x + w][pixels] = family + 1
        occupied[y:y + h, x:x + w] |= pixels
        pieces.append({"label": family + 1, "mirror": mirror, "turns": turns,
                       "colour": colour.tolist(), "y": y, "x": x})
    return image, mask, {"pieces": pieces, "left_out": left_out}


def main(argv=None):
    parser = common.make_parser(INFO, __doc__)
    args = parser.parse_args(argv)
    out_dir = common.output_dir(args, INFO)
    sizes = {"train": args.train, "val": args.val, "test": args.test}
    recipe = {"pieces_per_image": [1, MAX_PIECES], "families": FAMILY_NAMES, "mirror_probability": 0.5,
              "rotations": "uniform multiple of 90 degrees", "cell_pixels": CELL,
              "colour": f"uniform 0..255 per channel, redrawn while all channels < {MIN_BRIGHTEST}",
              "border": "1-pixel ring per cell brightened by colour // 2, clipped at 255",
              "placement": "uniform pixel offset inside the canvas whose bounding box holds no earlier piece's pixel; "
                           "a piece with no such offset is left out"}
    files = [f"{s}_{kind}.npy" for s in sizes for kind in ("images", "masks")]
    request = common.describe(INFO.name, args.seed, INFO, files, recipe, split_sizes=sizes)
    if common.already_done(out_dir, request, args.force):
        return out_dir

    arrays, infos, redrawn = common.generate_splits(make_sample, sizes, args.seed, INFO.name)
    counts = {s: np.bincount([len(i["pieces"]) for i in infos[s]], minlength=MAX_PIECES + 1)[1:].tolist()
              for s in sizes}
    left_out = {s: sum(i["left_out"] for i in infos[s]) for s in sizes}
    stats = {"redrawn_as_duplicates": redrawn, "images_with_1_to_5_pieces": counts, "pieces_left_out": left_out}
    common.write_dataset(out_dir, arrays, {**request, "stats": stats})
    return out_dir


if __name__ == "__main__":
    common.run_cli(main)
