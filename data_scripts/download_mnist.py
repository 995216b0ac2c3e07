"""
Downloads MNIST and derives the MNIST segmentation dataset (SPEC section 3).

1. Fetches the four standard MNIST IDX archives into <data root>/mnist/raw/, trying the
   mirrors in order, and checks their MD5 sums. Files already there with the right sum
   are kept. Without internet, put the four .gz files in a folder and use --from-dir.
2. Derives the 56x56 view: pixels / 255, bilinear resize 28 -> 56 (align_corners=False,
   as torch's interpolate), mask = digit + 1 where the resized pixel > 0.5, else 0;
   images stored as uint8 round(resized * 255). train / val = a fixed-seed permutation
   of the 60,000 training digits, the first 85% (51,000) train and the rest (9,000) val;
   test = the 10,000 test digits in file order. Test images equal to a train/val image
   are counted in dataset.json (they stay: the test set is the standard one).

    python data_scripts/download_mnist.py
    python data_scripts/download_mnist.py --from-dir ~/Downloads/mnist --data-root /tmp/waves_data

Writes {train,val,test}_images.npy (uint8 N x 56 x 56), {split}_masks.npy (uint8 N x 56 x 56)
and dataset.json into <data root>/mnist/ (raw/ stays beside them).
"""

import gzip
import hashlib
import shutil
import struct
import sys
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # so `python data_scripts/...` finds the repo

import numpy as np
from tqdm import tqdm

from data_scripts import common
from dataset_config import DatasetError, get_info, resolve_data_root

INFO = get_info("mnist")
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
PREFIX = {"train": "train", "test": "t10k"}  # file name prefix of each MNIST part
VAL_FRACTION = 0.15
VIEW_SIZE = (56, 56)
THRESHOLD = 0.5
CHUNK = 5000  # digits resized at a time: 5000 x 56 x 56 float64 is 125 MB

# -----------------------------------------------------------------------------
# raw files


def raw_dir_of(data_root=None):
    return resolve_data_root(data_root) / "mnist" / "raw"


def md5_of(path):
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_md5(path, expected):
    if not Path(path).is_file():
        raise DatasetError(f"{path} not found; run: python data_scripts/download_mnist.py (or with --from-dir DIR)")
    actual = md5_of(path)
    if actual != expected:
        raise DatasetError(f"{path}: MD5 is {actual}, expected {expected}: the file is damaged or not the "
                           f"standard MNIST file; delete it and download it again (or use --from-dir)")


def fetch_raw(raw_dir, checksums=MNIST_MD5, from_dir=None):
    """Makes sure raw_dir holds every file of `checksums` with the right MD5, copying from
    `from_dir` or downloading from MIRRORS. Each file arrives as .part, then is renamed."""
    raw_dir = Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    for name, md5 in checksums.items():
        dest, part = raw_dir / name, raw_dir / (name + ".part")
        if dest.is_file() and md5_of(dest) == md5:
            continue
        if from_dir is not None:
            source = Path(from_dir) / name
            if not source.is_file():
                raise DatasetError(f"{source} not found: --from-dir needs the four MNIST files "
                                   f"({', '.join(checksums)}) in {from_dir}")
            shutil.copyfile(source, part)
            try:
                verify_md5(part, md5)
            except DatasetError:
                part.unlink()
                raise DatasetError(f"{source}: MD5 is {md5_of(source)}, expected {md5}; it is not the standard "
                                   f"MNIST file {name}") from None
        else:
            failures = []
            for mirror in MIRRORS:
                print(f"downloading {mirror}{name}")
                try:
                    with urllib.request.urlopen(mirror + name, timeout=60) as response, open(part, "wb") as f:
                        shutil.copyfileobj(response, f)
                    verify_md5(part, md5)
                    break
                except (OSError, DatasetError) as e:  # URLError and timeouts are OSErrors
                    failures.append(f"{mirror}{name}: {e}")
                    part.unlink(missing_ok=True)
            else:
                raise DatasetError(
                    f"could not download {name}:\n  " + "\n  ".join(failures) +
                    f"\nGet {name} (MD5 {md5}) by other means and put it at {dest}, or put all four MNIST "
                    f"files in a folder DIR and run: python data_scripts/download_mnist.py --from-dir DIR")
        part.rename(dest)


def read_idx(path):
    """An IDX file (gzip'd) as a uint8 array. Format: 2 zero bytes, type 0x08 (unsigned byte),
    number of dimensions, each dimension as a big-endian uint32, then the data."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    if len(data) < 4:
        raise DatasetError(f"{path}: too short to be an IDX file")
    magic = struct.unpack(">I", data[:4])[0]
    if magic not in (2049, 2051):  # 0x0801 labels (1 dimension), 0x0803 images (3 dimensions)
        raise DatasetError(f"{path}: magic number {magic}, expected 2049 (labels) or 2051 (images)")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", data[4:header])
    if len(data) - header != int(np.prod(dims)):
        raise DatasetError(f"{path}: header says {' x '.join(map(str, dims))} = {int(np.prod(dims))} bytes, "
                           f"the file holds {len(data) - header}")
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def load_digits(raw_dir, part):
    """(images N x 28 x 28, labels N) of MNIST's "train" or "test" part, validated."""
    images = read_idx(Path(raw_dir) / f"{PREFIX[part]}-images-idx3-ubyte.gz")
    labels = read_idx(Path(raw_dir) / f"{PREFIX[part]}-labels-idx1-ubyte.gz")
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.ndim != 1:
        raise DatasetError(f"MNIST {part} files in {raw_dir}: shapes {images.shape} and {labels.shape}, "
                           f"expected N x 28 x 28 images and N labels")
    if len(images) != len(labels) or labels.max(initial=0) > 9:
        raise DatasetError(f"MNIST {part} files in {raw_dir}: {len(images)} images but {len(labels)} labels, "
                           f"labels up to {labels.max(initial=0)}")
    return images, labels

# -----------------------------------------------------------------------------
# the 56x56 segmentation view


def segmentation_view(digits, labels):
    """uint8 images round(resized * 255) and uint8 masks (digit + 1 where resized > 0.5)."""
    images = np.zeros((len(digits),) + VIEW_SIZE, np.uint8)
    masks = np.zeros((len(digits),) + VIEW_SIZE, np.uint8)
    for start in tqdm(range(0, len(digits), CHUNK), desc="mnist resize", unit="chunk"):
        # resize the 0..255 values: a 2x resize weighs by multiples of 1/16, so this is
        # exact in float64 and "> 0.5 after / 255" becomes the exact "> 127.5"
        resized = common.resize_bilinear(digits[start:start + CHUNK], VIEW_SIZE)
        images[start:start + CHUNK] = np.rint(resized)
        masks[start:start + CHUNK] = np.where(resized > THRESHOLD * 255, labels[start:start + CHUNK, None, None] + 1, 0)
    return images, masks


def describe(seed, checksums):
    recipe = {"source": checksums, "resize": f"bilinear 28 -> {VIEW_SIZE[0]}, align_corners=False",
              "mask": f"digit + 1 where resized pixel / 255 > {THRESHOLD}", "image": "uint8 round(resized)",
              "val_fraction": VAL_FRACTION,
              "split": "train/val = first 85% / rest of a seeded permutation of the training digits; "
                       "test = the test digits in file order"}
    files = [f"{s}_{kind}.npy" for s in INFO.splits for kind in ("images", "masks")]
    # the split sizes follow from the source files (pinned by their checksums), so they are
    # not part of what a rerun compares
    return common.describe(INFO.name, seed, INFO, files, recipe)


def prepare_mnist(raw_dir, out_dir, seed=common.DEFAULT_SEED, checksums=MNIST_MD5, force=False):
    """Derives the segmentation dataset in out_dir from the raw files in raw_dir."""
    request = describe(seed, checksums)
    if common.already_done(out_dir, request, force, keep=("raw",)):
        return out_dir
    for name, md5 in checksums.items():
        verify_md5(Path(raw_dir) / name, md5)
    train_digits, train_labels = load_digits(raw_dir, "train")
    test_digits, test_labels = load_digits(raw_dir, "test")

    order = np.random.default_rng(seed).permutation(len(train_digits))
    n_train = round(len(order) * (1 - VAL_FRACTION))
    parts = {"train": order[:n_train], "val": order[n_train:]}
    arrays = {}
    for split, index in parts.items():
        arrays[f"{split}_images"], arrays[f"{split}_masks"] = segmentation_view(train_digits[index],
                                                                                train_labels[index])
    arrays["test_images"], arrays["test_masks"] = segmentation_view(test_digits, test_labels)

    # the standard test set cannot be redrawn, so repeats of train/val images are only counted
    seen = {common.image_digest(image) for split in parts for image in arrays[f"{split}_images"]}
    repeats = sum(common.image_digest(image) in seen for image in arrays["test_images"])
    split_sizes = {split: len(arrays[f"{split}_images"]) for split in INFO.splits}
    meta = {**request, "split_sizes": split_sizes, "stats": {"test_images_equal_to_a_train_or_val_image": repeats}}
    common.write_dataset(out_dir, arrays, meta, keep=("raw",))
    return out_dir


def main(argv=None, checksums=MNIST_MD5):
    parser = common.make_parser(INFO, __doc__, generated=False)
    parser.add_argument("--from-dir", default=None,
                        help="copy the four MNIST .gz files from this folder instead of downloading them")
    args = parser.parse_args(argv)
    out_dir = common.output_dir(args, INFO)
    # checking first means a complete dataset needs neither the network nor the raw files
    if common.already_done(out_dir, describe(args.seed, checksums), args.force, keep=("raw",)):
        return out_dir
    raw_dir = raw_dir_of(args.data_root)
    fetch_raw(raw_dir, checksums, from_dir=args.from_dir)
    return prepare_mnist(raw_dir, out_dir, args.seed, checksums, force=True)


if __name__ == "__main__":
    common.run_cli(main)
