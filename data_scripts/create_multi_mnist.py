"""
Creates the Multi-MNIST segmentation dataset: the paper's generator, draw for draw.

With the default seed and sizes the arrays are the paper's, byte for byte (their SHA-256
are checked after writing; docs/methods.md, "Data"). Other seeds and sizes run the same
recipe. Python's `random`, seeded once, draws every split, train then val then test;
the digits always come from the 60,000 MNIST training digits, in file order:

  per image   black 128x128 canvas; n = random.randint(1, 4) digits
  per digit   i = random.randint(0, 59999); glyph = PIL's bilinear resize of digit i to
              42x42, then > 50 -> 255, else 0; up to 200 tries of x = random.randint(0, 86)
              (the column, drawn first), y = random.randint(0, 86): the first try where no
              glyph pixel of the 42x42 window at (y, x) covers an earlier digit is taken,
              else the digit is skipped (digits may touch)

The image is 255 and the mask digit + 1 on the glyph's pixels.

Needs the raw MNIST files in <data root>/mnist/raw/ (python data_scripts/download_mnist.py).

    python data_scripts/create_multi_mnist.py                   # 10,000 / 1,000 / 1,000 into ./data/multi_mnist
    python data_scripts/create_multi_mnist.py --data-root /tmp/waves_data --train 100 --val 10 --test 10

Writes {train,val,test}_images.npy (uint8 N x 128 x 128), {split}_masks.npy (uint8 N x 128 x 128),
{split}_counts.npy (uint8 N, the digits placed), {split}_digits.npy (int32 N x 4, the MNIST
training index of each placed digit, -1 for none) and dataset.json.
"""

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # so `python data_scripts/...` finds the repo

import numpy as np
from PIL import Image

from data_scripts import common
from data_scripts.mnist_files import MNIST_MD5, load_digits, raw_dir_of
from dataset_config import DatasetError, create_command, get_info

INFO = get_info("multi_mnist")
SIZE = 128
DIGIT_SIZE = 42
BINARY_THRESHOLD = 50  # of 255
MAX_DIGITS = 4
TRIES = 200


def glyph(digit):
    """A 28x28 uint8 digit as the 42x42 boolean map of its pixels: PIL bilinear resize, > 50."""
    return np.asarray(Image.fromarray(digit).resize((DIGIT_SIZE, DIGIT_SIZE), Image.BILINEAR)) > BINARY_THRESHOLD


def generate(digits, labels, sizes, seed):
    """{"train_images": ..., "train_masks": ..., "train_counts": ..., "train_digits": ..., ...}."""
    rng = random.Random(seed)  # the same stream as random.seed(seed) and the module's functions
    glyphs = {}  # digit index -> glyph: PIL is deterministic, so each digit is resized once
    arrays = {}
    for split, n in sizes.items():
        images = np.zeros((n, SIZE, SIZE), np.uint8)
        masks = np.zeros((n, SIZE, SIZE), np.uint8)
        placed = np.full((n, MAX_DIGITS), -1, np.int32)
        counts = np.zeros(n, np.uint8)
        for k in common.progress(range(n), f"multi_mnist {split}", "img"):
            for _ in range(rng.randint(1, MAX_DIGITS)):
                index = rng.randint(0, len(digits) - 1)
                if index not in glyphs:
                    glyphs[index] = glyph(digits[index])
                pixels = glyphs[index]
                for _ in range(TRIES):
                    x = rng.randint(0, SIZE - DIGIT_SIZE)
                    y = rng.randint(0, SIZE - DIGIT_SIZE)
                    window = masks[k, y:y + DIGIT_SIZE, x:x + DIGIT_SIZE]
                    if not window[pixels].any():
                        images[k, y:y + DIGIT_SIZE, x:x + DIGIT_SIZE][pixels] = 255
                        window[pixels] = labels[index] + 1
                        placed[k, counts[k]] = index
                        counts[k] += 1
                        break
        arrays.update({f"{split}_images": images, f"{split}_masks": masks, f"{split}_counts": counts,
                       f"{split}_digits": placed})
    return arrays


def main(argv=None, checksums=MNIST_MD5):
    parser = common.make_parser(INFO, __doc__)
    args = common.parse_args(parser, argv)
    out_dir = common.output_dir(args, INFO)
    raw_dir = raw_dir_of(args.data_root)
    if not raw_dir.is_dir():
        raise DatasetError(f"the raw MNIST files are missing (no {raw_dir}); get them with:\n"
                           f"{create_command('mnist', args.data_root)}")
    sizes = {"train": args.train, "val": args.val, "test": args.test}
    recipe = {"generator": "the paper's: one random.seed(seed) stream for train, then val, then test",
              "source": "the MNIST training digits, checked as download_mnist.py checks them",
              "digits_per_image": [1, MAX_DIGITS],
              "digit": f"random.randint(0, 59999); PIL bilinear resize to {DIGIT_SIZE}x{DIGIT_SIZE}, "
                       f"> {BINARY_THRESHOLD} -> 255 else 0",
              "placement": f"x = random.randint(0, 86), then y: the first of {TRIES} tries where no glyph pixel "
                           f"covers an earlier digit; else the digit is skipped"}
    files = [f"{s}_{kind}.npy" for s in sizes for kind in ("images", "masks", "counts", "digits")]
    request = common.describe(INFO, args.seed, sizes, files, recipe)
    if common.already_done(out_dir, request, args.force):
        return out_dir
    digits, labels = load_digits(raw_dir, "train", checksums)
    arrays = generate(digits, labels, sizes, args.seed)
    counts = {s: np.bincount(arrays[f"{s}_counts"], minlength=MAX_DIGITS + 1)[1:].tolist() for s in sizes}
    placed = {s: int(arrays[f"{s}_counts"].sum()) for s in sizes}
    common.write_dataset(out_dir, arrays, request, {"images_with_1_to_4_digits": counts, "digits_placed": placed},
                         force=args.force)
    return out_dir


if __name__ == "__main__":
    common.run_cli(main)
