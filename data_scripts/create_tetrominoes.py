"""
Creates the Tetrominoes segmentation dataset: the paper's generator, draw for draw.

With the default seed and sizes the arrays are the paper's, byte for byte (their SHA-256
are checked after writing; docs/methods.md, "Data"). Other seeds and sizes run the same
recipe. Every split is drawn from one legacy NumPy stream, train then val then test:

  per image   n = rs.randint(1, 6) pieces; the five families in label order, repeated
              n // 5 + 1 times, are shuffled with rs.shuffle and the first n are placed
              (so an image of 1-4 pieces never repeats a family)
  per piece   grid = rot90(grid, rs.choice([0, 1, 2, 3])); S/Z and J/L mirrored when
              rs.rand() < 0.5; cells become 7x7 pixels; colour = rs.randint(0, 256, 3, uint8);
              row = rs.randint(0, 64 - h), col = rs.randint(0, 64 - w), redrawn until the
              h x w box holds no earlier piece (exclusive bounds: no piece touches the
              bottom or right edge; pieces never overlap but may touch)
  painting    the piece's pixels take the colour, then each cell's 1-pixel outer ring gets
              colour // 2 added in uint8 arithmetic, which wraps around above 255 (so a
              bright channel turns dark on the ring, as in the paper's data)

The mask holds the family's label (I 1, O 2, T 3, S/Z 4, J/L 5).

    python data_scripts/create_tetrominoes.py                      # 10,000 / 1,000 / 1,000 into ./data/tetrominoes
    python data_scripts/create_tetrominoes.py --data-root /tmp/waves_data --train 100 --val 10 --test 10

Writes {train,val,test}_images.npy (uint8 N x 64 x 64 x 3), {split}_masks.npy (uint8 N x 64 x 64),
{split}_pieces.npy (uint8 N, pieces per image) and dataset.json. Rerunning over an identical
dataset does nothing.
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
MAX_PIECES = 5

# the five families as cell grids, in label order (label = index + 1)
FAMILIES = {
    "I": [[1, 1, 1, 1]],
    "O": [[1, 1], [1, 1]],
    "T": [[0, 1, 0], [1, 1, 1]],
    "S/Z": [[0, 1, 1], [1, 1, 0]],
    "J/L": [[1, 0, 0], [1, 1, 1]],
}
GRIDS = [np.array(grid) for grid in FAMILIES.values()]
MIRRORED = {list(FAMILIES).index(name) for name in ("S/Z", "J/L")}

CELL_RING = np.ones((CELL, CELL), bool)
CELL_RING[1:-1, 1:-1] = False


def draw_image(rs, image, mask):
    """Draws one image into the zeroed `image` (64 x 64 x 3) and `mask`; returns its number of pieces."""
    n = rs.randint(1, MAX_PIECES + 1)
    families = list(range(len(GRIDS))) * (n // len(GRIDS) + 1)
    rs.shuffle(families)
    for family in families[:n]:
        grid = np.rot90(GRIDS[family], rs.choice([0, 1, 2, 3]))
        if family in MIRRORED and rs.rand() < 0.5:
            grid = np.fliplr(grid)
        cells = grid.astype(bool)
        pixels = np.kron(cells, np.ones((CELL, CELL), bool))
        h, w = pixels.shape
        colour = rs.randint(0, 256, size=3, dtype=np.uint8)
        while True:
            row, col = rs.randint(0, SIZE - h), rs.randint(0, SIZE - w)
            if not mask[row:row + h, col:col + w].any():
                break
        box = image[row:row + h, col:col + w]
        box[pixels] = colour
        ring = np.kron(cells, CELL_RING)
        box[ring] += colour // 2  # uint8: wraps around, as the paper's generator did
        mask[row:row + h, col:col + w][pixels] = family + 1
    return n


def generate(sizes, seed):
    """{"train_images": ..., "train_masks": ..., "train_pieces": ..., ...} for every split, in order."""
    rs = np.random.RandomState(seed)
    arrays = {}
    for split, n in sizes.items():
        images = np.zeros((n, SIZE, SIZE, 3), np.uint8)
        masks = np.zeros((n, SIZE, SIZE), np.uint8)
        pieces = np.zeros(n, np.uint8)
        for i in common.progress(range(n), f"tetrominoes {split}", "img"):
            pieces[i] = draw_image(rs, images[i], masks[i])
        arrays.update({f"{split}_images": images, f"{split}_masks": masks, f"{split}_pieces": pieces})
    return arrays


def main(argv=None):
    parser = common.make_parser(INFO, __doc__)
    args = common.parse_args(parser, argv)
    out_dir = common.output_dir(args, INFO)
    sizes = {"train": args.train, "val": args.val, "test": args.test}
    recipe = {"generator": "the paper's: one np.random.RandomState(seed) for train, then val, then test",
              "pieces_per_image": [1, MAX_PIECES], "families": list(FAMILIES),
              "family_draw": "shuffled list of the five families (repeated n // 5 + 1 times), first n",
              "piece_draws": "rot90 by rs.choice([0,1,2,3]); S/Z, J/L fliplr if rs.rand() < 0.5; "
                             "colour rs.randint(0, 256, 3, uint8); position rs.randint(0, 64 - h), "
                             "rs.randint(0, 64 - w) until the box is free",
              "cell_pixels": CELL, "ring": "colour // 2 added to each cell's 1-pixel ring, uint8 wraparound"}
    files = [f"{s}_{kind}.npy" for s in sizes for kind in ("images", "masks", "pieces")]
    request = common.describe(INFO, args.seed, sizes, files, recipe)
    if common.already_done(out_dir, request, args.force):
        return out_dir
    arrays = generate(sizes, args.seed)
    counts = {s: np.bincount(arrays[f"{s}_pieces"], minlength=MAX_PIECES + 1)[1:].tolist() for s in sizes}
    common.write_dataset(out_dir, arrays, request, {"images_with_1_to_5_pieces": counts}, force=args.force)
    return out_dir


if __name__ == "__main__":
    common.run_cli(main)
