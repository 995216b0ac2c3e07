"""
The datasets of the experiments: one table that describes each of them, and the loader.

Every dataset lives in its own folder under a data root:

    <data root>/<folder>/{train,val,test}_images.npy   uint8, N x H x W x 3 (RGB) or N x H x W (gray)
    <data root>/<folder>/{train,val,test}_masks.npy    uint8 class ids, N x H x W (0 = background)
    <data root>/<folder>/dataset.json                  seed, split sizes and recipe it was made with

The data root is, in order: the `data_root` argument, the WAVES_DATA_ROOT environment
variable, or ./data (relative to the current directory; git ignores /data/).
The programs in data_scripts/ create the folders (see DatasetInfo.create_command).

    from dataset_config import load_dataset
    images, masks = load_dataset("tetrominoes", "train", limit=1000)  # float N x 3 x 64 x 64, int64 N x 64 x 64
"""

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DATA_ROOT_ENV = "WAVES_DATA_ROOT"
DEFAULT_DATA_ROOT = Path("data")
SPLITS = ("train", "val", "test")


def resolve_data_root(data_root=None) -> Path:
    """The data root: the argument if given, else $WAVES_DATA_ROOT, else ./data."""
    if data_root is not None:
        return Path(data_root)
    if os.environ.get(DATA_ROOT_ENV):
        return Path(os.environ[DATA_ROOT_ENV])
    return DEFAULT_DATA_ROOT


class DatasetError(Exception):
    """Any problem with finding, creating or reading a dataset; the message says what to do."""


class UnknownDatasetError(DatasetError):
    pass


class DatasetNotFoundError(DatasetError):
    pass


class CorruptDatasetError(DatasetError):
    pass


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    folder: str  # relative to the data root
    image_size: tuple  # (H, W)
    channels: int  # 3 = RGB stored N x H x W x 3, 1 = gray stored N x H x W
    num_classes: int  # including background
    class_names: tuple  # index = class id, 0 = "background"
    paper_split_sizes: tuple  # (train, val, test), in the order of `splits`
    create_command: str  # run from the repository root
    description: str
    create_hint: str = ""  # extra advice shown when the dataset is missing; {flag} = the --data-root flag
    splits: tuple = SPLITS


DIGITS = tuple(str(d) for d in range(10))

DATASETS = {
    "tetrominoes": DatasetInfo(
        name="tetrominoes",
        folder="tetrominoes",
        image_size=(64, 64),
        channels=3,
        num_classes=6,
        class_names=("background", "I", "O", "T", "S/Z", "J/L"),
        paper_split_sizes=(10_000, 1_000, 1_000),
        create_command="python data_scripts/create_tetrominoes.py",
        description="1-5 coloured tetrominoes of 7x7-pixel cells on black; the class is the shape "
                    "family (mirror images share a class), so colour and local texture do not tell it.",
    ),
    # MNIST's 56x56 view: the standard 28x28 digits scaled to [0,1], resized bilinearly
    # (align_corners=False) to 56x56; mask = digit + 1 where the resized pixel > 0.5, else 0.
    # train/val: a fixed-seed permutation of the 60,000 training digits, the first 85% (51,000)
    # train and the rest (9,000) val; test: the 10,000 standard test digits, in file order.
    "mnist": DatasetInfo(
        name="mnist",
        folder="mnist",
        image_size=(56, 56),
        channels=1,
        num_classes=11,
        class_names=("background",) + DIGITS,
        paper_split_sizes=(51_000, 9_000, 10_000),
        create_command="python data_scripts/download_mnist.py",
        create_hint="Without internet: put the four MNIST .gz files (train-images-idx3-ubyte.gz, "
                    "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) "
                    "in a folder DIR and run: python data_scripts/download_mnist.py --from-dir DIR{flag}",
        description="single MNIST digits upsampled to 56x56; every digit pixel is labelled with its digit.",
    ),
    "multi_mnist": DatasetInfo(
        name="multi_mnist",
        folder="multi_mnist",
        image_size=(128, 128),
        channels=1,
        num_classes=11,
        class_names=("background",) + DIGITS,
        paper_split_sizes=(10_000, 1_000, 1_000),
        create_command="python data_scripts/create_multi_mnist.py",
        create_hint="It reads the raw MNIST files; if they are missing, first run: "
                    "python data_scripts/download_mnist.py{flag}",
        description="1-4 binarised 42x42 MNIST training digits on a 128x128 canvas, never overlapping.",
    ),
    "polygons": DatasetInfo(
        name="polygons",
        folder="polygons",
        image_size=(64, 64),
        channels=1,
        num_classes=7,
        class_names=("background", "triangle", "square", "pentagon", "hexagon", "heptagon", "octagon"),
        paper_split_sizes=(10_000, 1_000, 1_000),
        create_command="python data_scripts/create_polygons.py",
        description="1-4 filled regular polygons (3-8 sides) at least 1 pixel apart; class = sides - 2, "
                    "so only the global shape tells the classes apart.",
    ),
}


def get_info(name) -> DatasetInfo:
    if name not in DATASETS:
        raise UnknownDatasetError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    return DATASETS[name]


def _root_flag(data_root):
    """" --data-root X" when X is not the root the scripts use by default, else ""."""
    root = resolve_data_root(data_root)
    return "" if root.resolve() == resolve_data_root().resolve() else f" --data-root {root}"


def create_command(name, data_root=None) -> str:
    """The exact command that creates a dataset under the given data root."""
    return get_info(name).create_command + _root_flag(data_root)


def how_to_create(name, data_root=None) -> str:
    """create_command plus the dataset's extra advice, for "not found" errors."""
    info, flag = get_info(name), _root_flag(data_root)
    return info.create_command + flag + ("\n" + info.create_hint.format(flag=flag) if info.create_hint else "")


def load_dataset(name, split, data_root=None, limit=None):
    """Returns (images, masks): float32 N x C x H x W in [0, 1] and int64 N x H x W class ids.
    `limit` keeps only the first `limit` samples (e.g. for --train-size)."""
    info = get_info(name)
    if split not in info.splits:
        raise DatasetError(f"unknown split {split!r} for {name}; valid splits: {', '.join(info.splits)}")
    folder = resolve_data_root(data_root) / info.folder
    image_path, mask_path = folder / f"{split}_images.npy", folder / f"{split}_masks.npy"
    if not (image_path.is_file() and mask_path.is_file()):
        raise DatasetNotFoundError(
            f"dataset {name!r} not found: {image_path} and {mask_path} do not both exist. Create it with:\n"
            f"{how_to_create(name, data_root)}")

    # memory-map, so a bad file fails on its header and `limit` reads only what is used
    try:
        images = np.load(image_path, mmap_mode="r")
        masks = np.load(mask_path, mmap_mode="r")
    except (ValueError, OSError, EOFError) as e:
        raise CorruptDatasetError(f"cannot read {image_path} or {mask_path} ({e}). Re-create the dataset with:\n"
                                  f"{create_command(name, data_root)} --force") from e
    H, W = info.image_size
    image_shape = (H, W, 3) if info.channels == 3 else (H, W)

    def check(ok, path, problem):
        if not ok:
            raise CorruptDatasetError(f"{path}: {problem}. Re-create the dataset with:\n"
                                      f"{create_command(name, data_root)} --force")

    check(images.dtype == np.uint8, image_path, f"dtype is {images.dtype}, expected uint8")
    check(images.shape[1:] == image_shape, image_path,
          f"shape is {images.shape}, expected N x {' x '.join(map(str, image_shape))}")
    check(masks.dtype == np.uint8, mask_path, f"dtype is {masks.dtype}, expected uint8")
    check(masks.shape[1:] == (H, W), mask_path, f"shape is {masks.shape}, expected N x {H} x {W}")
    check(len(images) == len(masks), mask_path,
          f"holds {len(masks)} masks but {image_path.name} holds {len(images)} images")

    if limit is not None:
        if not 0 <= limit <= len(images):
            raise DatasetError(f"limit={limit} asked for, but {name} {split} holds {len(images)} samples")
        images, masks = images[:limit], masks[:limit]
    # one cheap pass (uint8 is never negative, so the max is enough); a bad id would
    # otherwise surface later as an obscure index error inside the loss
    top = int(masks.max()) if len(masks) else 0
    check(top < info.num_classes, mask_path,
          f"holds class id {top}, but {name} has {info.num_classes} classes (0..{info.num_classes - 1})")

    images = torch.from_numpy(np.array(images)).float().div_(255)
    images = images.permute(0, 3, 1, 2).contiguous() if info.channels == 3 else images.unsqueeze(1)
    masks = torch.from_numpy(np.array(masks)).long()
    return images, masks
