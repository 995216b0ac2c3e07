"""
Creates the Multi-MNIST segmentation dataset (SPEC section 3).

Each 128x128 gray image holds 1-4 (uniform) MNIST digits on black. A digit is a random
MNIST training digit (all splits draw from the 60,000 training digits, as in the
original), resized bilinearly to 42x42 (align_corners=False) and binarised (> 50 of 255
-> 255, else 0). It is pasted at a uniform position fully inside the canvas, redrawn up to
200 times until none of its digit pixels covers an earlier digit's pixels, else the digit
is skipped (digits may touch). The mask holds digit + 1 on its pixels.

Needs the raw MNIST files in <data root>/mnist/raw/ (python data_scripts/download_mnist.py).

    python data_scripts/create_multi_mnist.py                   # 10,000 / 1,000 / 1,000 into ./data/multi_mnist
    python data_scripts/create_multi_mnist.py --data-root /tmp/waves_data --train 100 --val 10 --test 10

Writes {train,val,test}_images.npy (uint8 N x 128 x 128), {split}_masks.npy (uint8 N x 128 x 128),
{split}_counts.npy (uint8 N, the number of digits placed) and dataset.json.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # so `python data_scripts/...` finds the repo

import numpy as np

from data_scripts import common
from data_scripts.download_mnist import MNIST_MD5, load_digits, md5_of, raw_dir_of
from dataset_config import DatasetError, create_command, get_info

INFO = get_info("multi_mnist")
SIZE = 128
DIGIT_SIZE = 42
BINARY_THRESHOLD = 50  # of 255
MAX_DIGITS = 4
TRIES = 200


def glyph(digit):
    """A 28x28 uint8 digit as the 42x42 boolean map of its pixels after resize and binarising."""
    return common.resize_bilinear(digit, (DIGIT_SIZE, DIGIT_SIZE)) > BINARY_THRESHOLD


def make_sampler(digits, labels):
    """make_sample(rng) -> (image, mask, {"digits": [placed digit, ...], "skipped": n}) drawing from these digits."""
    def make_sample(rng):
        image = np.zeros((SIZE, SIZE), np.uint8)
        mask = np.zeros((SIZE, SIZE), np.uint8)
        placed, skipped = [], 0
        for _ in range(rng.integers(1, MAX_DIGITS + 1)):
            index = int(rng.integers(len(digits)))
            pixels = glyph(digits[index])
            for _ in range(TRIES):
                y, x = rng.integers(SIZE - DIGIT_SIZE + 1, size=2)
                if not mask[y:y + DIGIT_SIZE, x:x + DIGIT_SIZE][pixels].any():
                    image[y:y + DIGIT_SIZE, x:x + DIGIT_SIZE][pixels] = 255
                    mask[y:y + DIGIT_SIZE, x:x + DIGIT_SIZE][pixels] = labels[index] + 1
                    placed.append({"index": index, "label": int(labels[index]), "y": int(y), "x": int(x)})
                    break
            else:
                skipped += 1
        return image, mask, {"digits": placed, "skipped": skipped}
    return make_sample


def main(argv=None):
    parser = common.make_parser(INFO, __doc__)
    args = parser.parse_args(argv)
    out_dir = common.output_dir(args, INFO)
    raw_dir = raw_dir_of(args.data_root)
    sources = [raw_dir / name for name in MNIST_MD5 if name.startswith("train")]
    missing = [str(path) for path in sources if not path.is_file()]
    if missing:
        raise DatasetError(f"the raw MNIST training files are missing ({', '.join(missing)}); "
                           f"get them with:\n{create_command('mnist', args.data_root)}")
    sizes = {"train": args.train, "val": args.val, "test": args.test}
    recipe = {"digits_per_image": [1, MAX_DIGITS], "source": {path.name: md5_of(path) for path in sources},
              "digit": f"random MNIST training digit, bilinear 28 -> {DIGIT_SIZE} (align_corners=False), "
                       f"> {BINARY_THRESHOLD} -> 255 else 0",
              "placement": f"uniform position inside the canvas; its digit pixels may not cover earlier digit "
                           f"pixels; {TRIES} tries, else the digit is skipped"}
    files = [f"{s}_{kind}.npy" for s in sizes for kind in ("images", "masks", "counts")]
    request = common.describe(INFO.name, args.seed, INFO, files, recipe, split_sizes=sizes)
    if common.already_done(out_dir, request, args.force):
        return out_dir

    digits, labels = load_digits(raw_dir, "train")
    arrays, infos, redrawn = common.generate_splits(make_sampler(digits, labels), sizes, args.seed, INFO.name)
    for split in sizes:
        arrays[f"{split}_counts"] = np.array([len(i["digits"]) for i in infos[split]], np.uint8)
    counts = {s: np.bincount(arrays[f"{s}_counts"], minlength=MAX_DIGITS + 1)[1:].tolist() for s in sizes}
    skipped = {s: sum(i["skipped"] for i in infos[s]) for s in sizes}
    stats = {"redrawn_as_duplicates": redrawn, "images_with_1_to_4_digits": counts, "digits_skipped": skipped}
    common.write_dataset(out_dir, arrays, {**request, "stats": stats})
    return out_dir


if __name__ == "__main__":
    common.run_cli(main)
