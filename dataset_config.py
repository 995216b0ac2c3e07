"""
The datasets of the experiments: one table that describes each of them, and the loader.

Every dataset lives in its own folder under a data root:

    <data root>/<folder>/{train,val,test}_images.npy   uint8, N x H x W x 3 (RGB) or N x H x W (gray)
    <data root>/<folder>/{train,val,test}_masks.npy    uint8 class ids, N x H x W (0 = background)
    <data root>/<folder>/dataset.json                  recipe, seed, split sizes, SHA-256 of every array

The data root is, in order: the `data_root` argument, the WAVES_DATA_ROOT environment
variable, or ./data (settings.py; relative to the current directory; git ignores /data/).
The programs in data_scripts/ create the folders (see DatasetInfo.create_command); the
loader refuses a folder they did not write (no dataset.json, or an older format). With
their default seeds and sizes, Tetrominoes, MNIST and Multi-MNIST are the paper's arrays
byte for byte: `paper_sha256` holds the SHA-256 of each array the paper's generators
wrote (docs/methods.md, "Data"), and `python data_scripts/verify_datasets.py` checks them.
Every run checks the arrays against their dataset.json when it starts (check_arrays), since
it records that file's hashes as the data it was trained on.

Your own data: data_scripts/import_folder.py writes a folder of image and mask PNGs as
<data root>/<name>/ in the same format; get_info reads such a dataset's entry from its
dataset.json, and the imported datasets of the default data root join DATASETS when this
module is imported, so every tool offers them by name (docs/extending.md).

A dataset is written into a temporary folder beside its own and renamed into place
(data_scripts/common.py), under an flock on the data root; a writer killed part-way leaves
that folder behind, which the next writer, or the loader when no writer is at work, removes
(or, when the kill came between the two renames of a replacement, puts in place).

    from dataset_config import load_dataset
    images, masks = load_dataset("tetrominoes", "train", limit=1000)  # float N x 3 x 64 x 64, int64 N x 64 x 64
"""

import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from settings import data_root as resolve_data_root

SPLITS = ("train", "val", "test")
METADATA = "dataset.json"
FORMAT_VERSION = 2  # 2: the paper's generators, with SHA-256 of every array


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
    default_seed: int  # the seed of the paper's generator (ours, for Polygons)
    create_hint: str = ""  # extra advice shown when the dataset is missing; {flag} = the --data-root flag
    paper_sha256: dict = field(default_factory=dict)  # array name -> SHA-256 of the paper's array
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
        description="1-5 coloured tetrominoes of 7x7-pixel cells on black, never overlapping; the class is "
                    "the shape family (mirror images share a class), so colour and local texture do not tell it.",
        default_seed=42,
        paper_sha256={
            "train_images": "540a65896f6a4a28bd1e89f350645ba9d21e1d673907174c4b5aa464b2851d9b",
            "train_masks": "239fd1a5219ecadb557688a90aa5c8e4578a4557b190956c8ed3a033b4c59886",
            "val_images": "d1ce4acf5ecdbafcdad5b54f1fc89b111553224d67fe17977d272cf90e41d654",
            "val_masks": "122580571f7c5e0cfb27b4ff6c8dc727ca42b0089dd07d92f8a7bd9e6bf68700",
            "test_images": "3d548459ed6b74a92cfd5b801e6d547220f2d86b1c002c7b0894fc872790ebea",
            "test_masks": "2719826ca161d157b50523718f993c257938312cc788dc4fdae1f83250fb0044",
        },
    ),
    "mnist": DatasetInfo(
        name="mnist",
        folder="mnist",
        image_size=(56, 56),
        channels=1,
        num_classes=11,
        class_names=("background",) + DIGITS,
        paper_split_sizes=(51_000, 9_000, 10_000),
        create_command="python data_scripts/download_mnist.py",
        create_hint="Without internet: put the four MNIST files (train-images-idx3-ubyte, train-labels-idx1-ubyte, "
                    "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte; gzip'd or not, from any source) in a folder "
                    "DIR and run: python data_scripts/download_mnist.py --from-dir DIR{flag}",
        description="single MNIST digits upsampled to 56x56; every digit pixel is labelled with its digit.",
        default_seed=42,
        paper_sha256={  # the images are stored as uint8 round(255 x the paper's float input): no paper hash
            "train_indices": "b19af9588bb2d0c2cc06749be8192a2f3e0fb413eaea03f150d8ddf4b2b307ff",
            "val_indices": "c226dbfed373ff3a28cf50035c1081311b0b27e3c038dc26e4ef55a452656878",
            "train_masks": "37e1889952e5343b3827f3b7b2e2972faf354a22c98b71120cbc9ea79f917948",
            "val_masks": "0ef2fd47050141bdf2877f2b10137fcb7487a744fff6da85189b35d53ba774fc",
            "test_masks": "a97a78f7994016762983cb3ccfca97b3813bbf30c3ffb2d43818e945d6d21784",
        },
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
        default_seed=50,
        paper_sha256={
            "train_images": "d3b7cf221f26e935cbc881efb3f8cf589532b3d618a0d46d57e7f2a7e8a59574",
            "train_masks": "c72b05e85dadb2798d98ee9723c0d00a983ba285c2a46ae0c7672c6d195c016a",
            "val_images": "4baace8bba70725c9518abfe4ab2420254879b86e3037248ce6b3aeb08224b93",
            "val_masks": "a02abbdadd1f0a154514927f5fa1ee2c2582d7a3bc1937475c613562bdd31237",
            "test_images": "bdaf9297e835c5f08c0257926ebadf94451f6ea65bb7bd29242290aff0cad920",
            "test_masks": "5184e8bfa5b6519a857dff08de7647912f195d397d03b4ab5d42614d81655009",
        },
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
        default_seed=0,  # our own recipe: the paper published no generator for it
    ),
}


# -----------------------------------------------------------------------------
# datasets imported from a user's folder (data_scripts/import_folder.py)

IMPORTER = "data_scripts/import_folder.py"
NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,63}")  # no dots: temporary folders are named .<name>.tmp-XXXX


def imported_info(meta):
    """The DatasetInfo of an imported dataset, from its dataset.json."""
    sizes = meta["split_sizes"]
    return DatasetInfo(
        name=meta["dataset"], folder=meta["dataset"], image_size=tuple(meta["image_size"]),
        channels=meta["channels"], num_classes=len(meta["class_names"]), class_names=tuple(meta["class_names"]),
        paper_split_sizes=tuple(sizes[split] for split in SPLITS), create_command=meta["recipe"]["command"],
        description=f"imported from {meta['recipe']['source']}", default_seed=meta["seed"])


def read_imported(folder):
    """The DatasetInfo of the imported dataset in `folder`, or None when the folder holds none
    (no dataset.json, or one a generator wrote). CorruptDatasetError when its dataset.json is damaged."""
    path = Path(folder) / METADATA
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
        if not (isinstance(meta, dict) and isinstance(meta.get("recipe"), dict)
                and meta["recipe"].get("importer") == IMPORTER):
            return None
        if meta["dataset"] != Path(folder).name:
            raise ValueError(f"it names dataset {meta['dataset']!r}")
        return imported_info(meta)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CorruptDatasetError(f"{path} is damaged ({e}); import the folder again with "
                                  f"python {IMPORTER} ... --force") from None


def imported_datasets(data_root=None):
    """{name: DatasetInfo} of every readable imported dataset under the data root."""
    root, found = resolve_data_root(data_root), {}
    try:
        folders = sorted(p for p in root.iterdir() if NAME_PATTERN.fullmatch(p.name) and p.name not in BUILT_IN)
    except OSError:  # no data root yet, or not a folder: nothing imported
        return found
    for folder in folders:
        try:
            info = read_imported(folder)
        except (CorruptDatasetError, OSError):  # named when asked for (get_info)
            continue
        if info is not None:
            found[info.name] = info
    return found


BUILT_IN = tuple(DATASETS)
# imported datasets under the default data root (./data or $WAVES_DATA_ROOT) are known by name to every tool
DATASETS.update(imported_datasets())


def get_info(name, data_root=None) -> DatasetInfo:
    """The table's entry of dataset `name`: a built-in one, or one imported under the data root
    (read from its dataset.json each time, since another data root may hold another dataset of that name)."""
    if name not in BUILT_IN and isinstance(name, str) and NAME_PATTERN.fullmatch(name):
        info = read_imported(resolve_data_root(data_root) / name)
        if info is not None:
            return info
    if name not in DATASETS:
        raise UnknownDatasetError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)} (your own "
                                  f"images and masks: python {IMPORTER} --help)")
    return DATASETS[name]


def _root_flag(data_root):
    """" --data-root X" when X is not the root the scripts use by default, else ""."""
    root = resolve_data_root(data_root)
    return "" if root.resolve() == resolve_data_root().resolve() else f" --data-root {shlex.quote(str(root))}"


def create_command(name, data_root=None) -> str:
    """The exact command that creates a dataset under the given data root."""
    return get_info(name, data_root).create_command + _root_flag(data_root)


def how_to_create(name, data_root=None, force=False) -> str:
    """create_command (with --force where a folder is in the way) plus the dataset's extra advice, for "not
    found" and "not complete" errors."""
    info, flag = get_info(name, data_root), _root_flag(data_root) + " --force" * force
    return info.create_command + flag + ("\n" + info.create_hint.format(flag=flag) if info.create_hint else "")


def array_sha256(array):
    """SHA-256 of an array's bytes in C order (arr.tobytes()): how the paper's arrays are pinned."""
    return hashlib.sha256(np.ascontiguousarray(array)).hexdigest()  # hashed in place: no copy of a memory map


def rebuild_command(meta, data_root=None) -> str:
    """The command that writes the dataset a dataset.json describes again: its seed and sizes, --force."""
    info = get_info(meta["dataset"], data_root)
    if (meta.get("recipe") or {}).get("importer") == IMPORTER:  # its recorded command names seed and splits
        return create_command(info.name, data_root) + " --force"
    flags = f" --seed {meta['seed']}" if meta["seed"] != info.default_seed else ""
    for split, paper_size in zip(info.splits, info.paper_split_sizes):
        if meta["split_sizes"][split] != paper_size:
            flags += f" --{split} {meta['split_sizes'][split]}"
    return create_command(info.name, data_root) + flags + " --force"


# -----------------------------------------------------------------------------
# writers, and what a killed one leaves behind

@contextmanager
def directory_lock(directory, wait=True):
    """Holds an exclusive flock on `directory` while a dataset is written into it. The kernel
    drops it when its holder dies, even by SIGKILL, so a held lock means a live writer. Yields
    True when held; False when wait=False and another process holds it, or when the folder
    cannot be opened or this file system cannot lock."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError:  # BlockingIOError: a live writer holds it; else no locks on this file system
            yield False
            return
        yield True
    finally:
        os.close(fd)


def temporary_folders(folder, kind):
    """{suffix: path} of the temporary folders (kind "tmp": being written, "old": being replaced)
    that writing dataset folder `folder` makes beside it: .<name>.<kind>-<suffix>."""
    prefix = f".{folder.name}.{kind}-"
    try:
        entries = list(folder.parent.iterdir())
    except OSError:
        return {}
    return {p.name[len(prefix):]: p for p in entries
            if p.name.startswith(prefix) and "." not in p.name[len(prefix):] and p.is_dir()}


def finish_interrupted_writes(folder):
    """Cleans up after writers of dataset folder `folder` that died; call it holding the lock of
    folder.parent, so every temporary folder there is a dead writer's. A swap that began (an
    .old- folder exists, so the new one was complete) is finished; anything else is removed."""
    for suffix, old in temporary_folders(folder, "old").items():
        new = folder.parent / f".{folder.name}.tmp-{suffix}"
        if not folder.exists() and new.is_dir():  # killed between the renames of the swap: finish it
            for entry in old.iterdir():
                if not (new / entry.name).exists():  # what the writer kept from the old folder (MNIST's raw/)
                    os.rename(entry, new / entry.name)
            os.rename(new, folder)
        elif not folder.exists():
            os.rename(old, folder)
            continue
        shutil.rmtree(old)
        print(f"finished replacing {folder}: its writer was stopped during the swap", file=sys.stderr)
    for temporary in temporary_folders(folder, "tmp").values():
        shutil.rmtree(temporary)
        print(f"removed {temporary}: a half-written copy of {folder.name} whose writer was stopped", file=sys.stderr)


def dataset_folder(name, data_root=None):
    """The folder of dataset `name`, after cleaning up what stopped writers left beside it (not
    while a writer is at work there, and not where the data root cannot be written)."""
    folder = resolve_data_root(data_root) / get_info(name, data_root).folder
    with directory_lock(folder.parent, wait=False) as held:
        if held:
            try:
                finish_interrupted_writes(folder)
            except OSError as e:  # e.g. a read-only data root: reading still works
                print(f"warning: could not clean up beside {folder} ({e})", file=sys.stderr)
    return folder


def read_metadata(name, data_root=None):
    """The dataset.json of a dataset folder, refusing folders the data scripts did not write."""
    folder = dataset_folder(name, data_root)
    path = folder / METADATA
    if not folder.is_dir():
        raise DatasetNotFoundError(f"dataset {name!r} not found: no folder {folder}. Create it with:\n"
                                   f"{how_to_create(name, data_root)}")
    if not path.is_file():
        raise DatasetError(f"{folder} has no {METADATA}, so it was not written (or not completely) by this "
                           f"project's data scripts. Re-create it with:\n{how_to_create(name, data_root, force=True)}")
    try:
        meta = json.loads(path.read_text())
    except ValueError:
        raise CorruptDatasetError(f"{path} is unreadable. Re-create the dataset with:\n"
                                  f"{create_command(name, data_root)} --force") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise DatasetError(f"{folder} was made by an older version of the data scripts (format "
                           f"{meta.get('format_version')}, now {FORMAT_VERSION}: the paper's exact recipes, with "
                           f"checksums). Re-create it with:\n{create_command(name, data_root)} --force")
    return meta


def array_digests(name, data_root=None):
    """{array name: SHA-256 of the array on disk now, None when missing or unreadable} for every
    array the dataset's dataset.json records."""
    folder = resolve_data_root(data_root) / get_info(name, data_root).folder
    digests = {}
    for array_name in read_metadata(name, data_root)["sha256"]:
        try:
            digests[array_name] = array_sha256(np.load(folder / f"{array_name}.npy", mmap_mode="r"))
        except (OSError, ValueError, EOFError):
            digests[array_name] = None
    return digests


def check_arrays(name, data_root=None):
    """Refuses (CorruptDatasetError) a dataset whose arrays are not the bytes its dataset.json records:
    a run stores that record as the data it was trained on (fingerprint)."""
    meta = read_metadata(name, data_root)
    changed = [f"{k}.npy" for k, digest in array_digests(name, data_root).items() if digest != meta["sha256"][k]]
    if changed:
        folder = resolve_data_root(data_root) / get_info(name, data_root).folder
        raise CorruptDatasetError(f"{folder}: {', '.join(changed)} changed since the dataset was written (SHA-256 "
                                  f"differs from {METADATA}, or the file is missing or unreadable), so a run could "
                                  f"not say what it was trained on. Re-create the dataset with:\n"
                                  f"{rebuild_command(meta, data_root)}")


def fingerprint(meta):
    """What identifies a dataset's bytes, from its dataset.json: one SHA-256 over the
    SHA-256 of every array, plus the seed and split sizes it was made with. Runs record
    it in their config.json."""
    digests = meta["sha256"]
    combined = hashlib.sha256("".join(f"{k}:{digests[k]}\n" for k in sorted(digests)).encode()).hexdigest()
    return {"dataset": meta["dataset"], "sha256": combined, "seed": meta["seed"],
            "split_sizes": meta["split_sizes"], "paper_identical": meta["paper_identical"]}


def load_dataset(name, split, data_root=None, limit=None):
    """Returns (images, masks): float32 N x C x H x W in [0, 1] and int64 N x H x W class ids.
    `limit` keeps only the first `limit` samples (e.g. for --train-size)."""
    info = get_info(name, data_root)
    if split not in info.splits:
        raise DatasetError(f"unknown split {split!r} for {name}; valid splits: {', '.join(info.splits)}")
    folder = dataset_folder(name, data_root)
    image_path, mask_path = folder / f"{split}_images.npy", folder / f"{split}_masks.npy"
    if not (image_path.is_file() and mask_path.is_file()):
        raise DatasetNotFoundError(
            f"dataset {name!r} not found: {image_path} and {mask_path} do not both exist. Create it with:\n"
            f"{how_to_create(name, data_root)}")
    read_metadata(name, data_root)

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
            raise DatasetError(f"the first {limit} samples asked for, but the {name} {split} split holds "
                               f"{len(images)}")
        images, masks = images[:limit], masks[:limit]
    # one cheap pass (uint8 is never negative, so the max is enough); a bad id would
    # otherwise surface later as an obscure index error inside the loss
    top = int(masks.max()) if len(masks) else 0
    check(top < info.num_classes, mask_path,
          f"holds class id {top}, but {name} has {info.num_classes} classes (0..{info.num_classes - 1})")

    images = torch.from_numpy(np.array(images))
    # channels first while uint8: one float copy at most (an imported RGB split can be GBs)
    images = (images.permute(0, 3, 1, 2).contiguous() if info.channels == 3 else images.unsqueeze(1)).float().div_(255)
    masks = torch.from_numpy(np.array(masks)).long()
    return images, masks
