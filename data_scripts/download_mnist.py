"""
Gets the four MNIST files and derives the MNIST segmentation dataset: the paper's view.

1. Makes sure <data root>/mnist/raw/ holds the four standard MNIST files: downloaded from
   the usual mirrors, or, without internet, copied from a folder (--from-dir DIR) holding
   them from any source, gzip'd (name.gz) or not, also under Kaggle's names
   (train-images.idx3-ubyte). What is checked is each file's
   decompressed content (its MD5), so every faithful copy passes and a wrong file is
   named. Files already there and right are kept.
2. Derives the 56x56 view exactly as the paper did: the split is torch.manual_seed(seed);
   random_split of the 60,000 training digits into [51,000, 9,000], i.e. torch.randperm
   under that seed, whose first 51,000 indices are train and the rest val, in that
   order; test = the 10,000 test digits in file order. Each digit: x = digit / 255
   (float32), F.interpolate to 56x56 (bilinear, align_corners=False, float32); mask =
   digit + 1 where the resized value > 0.5, else 0; image = uint8 round(255 x resized)
   (within 1/510 of the paper's float input).

With the default seed the split indices and the masks are the paper's, byte for byte
(their SHA-256 are checked after writing; docs/methods.md, "Data").

    python data_scripts/download_mnist.py
    python data_scripts/download_mnist.py --from-dir ~/Downloads/mnist --data-root /tmp/waves_data

Writes {train,val,test}_images.npy (uint8 N x 56 x 56), {split}_masks.npy (uint8 N x 56 x 56),
{split}_indices.npy (int64 N: the MNIST digit each image was made from; train and val index
the training file, test the test file) and dataset.json into <data root>/mnist/ (or --out);
the raw files stay in <data root>/mnist/raw/ either way.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # so `python data_scripts/...` finds the repo

import numpy as np
import torch
import torch.nn.functional as F

from data_scripts import common
from data_scripts.mnist_files import MNIST_MD5, fetch_raw, find_file, load_digits, raw_dir_of
from dataset_config import DatasetError, get_info

INFO = get_info("mnist")
TRAIN_FRACTION = 0.85  # 51,000 of the 60,000 training digits; the rest is the val split
VIEW_SIZE = (56, 56)
THRESHOLD = 0.5
CHUNK = 5000  # digits resized at a time


def paper_split(n_digits, seed):
    """(train indices, val indices): torch.manual_seed(seed); random_split(range(n), [85%, 15%]),
    which is torch.randperm(n) under that seed cut after its first 85% (51,000 of 60,000)."""
    order = torch.randperm(n_digits, generator=torch.Generator().manual_seed(seed)).numpy().astype(np.int64)
    n_train = round(n_digits * TRAIN_FRACTION)
    return order[:n_train], order[n_train:]


def segmentation_view(digits, labels, desc):
    """uint8 images round(255 x resized) and uint8 masks (digit + 1 where resized > 0.5), in float32."""
    images = np.zeros((len(digits),) + VIEW_SIZE, np.uint8)
    masks = np.zeros((len(digits),) + VIEW_SIZE, np.uint8)
    for start in common.progress(range(0, len(digits), CHUNK), f"mnist {desc}", "chunk"):
        x = torch.from_numpy(np.array(digits[start:start + CHUNK])).float().div(255)[:, None]
        resized = F.interpolate(x, size=VIEW_SIZE, mode="bilinear", align_corners=False)[:, 0].numpy()
        images[start:start + CHUNK] = np.rint(resized * 255)
        masks[start:start + CHUNK] = np.where(resized > THRESHOLD, labels[start:start + CHUNK, None, None] + 1, 0)
    return images, masks


def describe(seed, checksums):
    recipe = {"source": {name: f"MD5 of the decompressed file {md5}" for name, md5 in checksums.items()},
              "split": f"torch.randperm(60000) after torch.manual_seed(seed): the first {TRAIN_FRACTION:.0%} "
                       f"(51,000) train, the rest val, in that order; test = the test digits in file order",
              "view": f"digit / 255 (float32), F.interpolate to {VIEW_SIZE[0]}x{VIEW_SIZE[1]}, bilinear, "
                      f"align_corners=False", "mask": f"digit + 1 where resized > {THRESHOLD}",
              "image": "uint8 round(255 x resized)"}
    files = [f"{s}_{kind}.npy" for s in INFO.splits for kind in ("images", "masks", "indices")]
    # no split sizes: they follow from the source files, which the checksums pin
    return common.describe(INFO, seed, None, files, recipe)


def prepare_mnist(raw_dir, out_dir, seed=INFO.default_seed, checksums=MNIST_MD5, force=True):
    """Derives the segmentation dataset in out_dir from the raw files in raw_dir; force as in
    common.write_dataset."""
    request = describe(seed, checksums)
    train_digits, train_labels = load_digits(raw_dir, "train", checksums)
    test_digits, test_labels = load_digits(raw_dir, "test", checksums)
    train_index, val_index = paper_split(len(train_digits), seed)
    indices = {"train": train_index, "val": val_index, "test": np.arange(len(test_digits), dtype=np.int64)}
    arrays = {}
    for split, index in indices.items():
        digits, labels = (test_digits, test_labels) if split == "test" else (train_digits, train_labels)
        images, masks = segmentation_view(digits[index], labels[index], split)
        arrays.update({f"{split}_images": images, f"{split}_masks": masks, f"{split}_indices": index})
    request["split_sizes"] = {split: len(index) for split, index in indices.items()}
    common.write_dataset(out_dir, arrays, request, keep=("raw",), force=force)
    return out_dir


def main(argv=None, checksums=MNIST_MD5):
    parser = common.make_parser(INFO, __doc__, generated=False)
    parser.add_argument("--from-dir", default=None, metavar="DIR",
                        help="take the four MNIST files from DIR instead of downloading them (any source; "
                             "gzip'd as name.gz or not, also Kaggle's train-images.idx3-ubyte; their decompressed "
                             "content is checked)")
    args = common.parse_args(parser, argv)
    out_dir = common.output_dir(args, INFO)
    raw_dir = raw_dir_of(args.data_root)
    # checking first means a complete dataset needs neither the network nor the raw files
    if common.already_done(out_dir, describe(args.seed, checksums), args.force, keep=("raw",)):
        if any(find_file(raw_dir, name) is None for name in checksums):  # create_multi_mnist.py reads them
            try:
                fetch_raw(raw_dir, args.from_dir, checksums)
                print(f"fetched the raw MNIST files into {raw_dir} (create_multi_mnist.py makes Multi-MNIST from them)")
            except (OSError, DatasetError) as e:
                print(f"note: {raw_dir} lacks raw MNIST files, which create_multi_mnist.py needs, and they could not "
                      f"be fetched ({str(e).splitlines()[0]}); give them with --from-dir DIR", file=sys.stderr)
        return out_dir
    fetch_raw(raw_dir, args.from_dir, checksums)
    return prepare_mnist(raw_dir, out_dir, args.seed, checksums, args.force)


if __name__ == "__main__":
    common.run_cli(main)
