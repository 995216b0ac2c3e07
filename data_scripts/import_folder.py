"""
Imports your own segmentation data: a folder of PNG images and PNG masks becomes a dataset
that every tool takes by name (python train.py --dataset NAME, produce_scores.py, predict.py).

The folder holds

    images/<name>.png   the images: gray or colour (alpha is composited onto black, 16-bit
                        gray scaled to 8 bits); all of one size
    masks/<name>.png    one per image, same name and size: each pixel's class id (an 8-bit
                        gray or palette PNG, whose indices are the ids; 0 = background)
    classes.txt         the class names, one per line, line 1 naming class 0 (the background)

(--images, --masks, --mask-suffix and --classes describe other layouts.) Every pair is
checked before anything is written, and every problem is listed at once by file name:
an image without its mask or a mask without its image, a file that does not decode, a
mask of another size than its image, an image of another size than the rest, a mask with
colours instead of class ids, a class id without a name. The pairs are split into
train/val/test by a seed (--val-fraction, --test-fraction) or by lists of names
(--split-lists). The arrays and dataset.json (SHA-256 of every array and of every source
file, the split of every name, the command that made it) are written as the generators
write theirs, into <data root>/NAME; the original files are only read.

    python data_scripts/import_folder.py my_folder --name my_shapes
    python data_scripts/import_folder.py my_folder --name my_shapes --classes background,circle,square --seed 1
    python data_scripts/import_folder.py my_folder --name my_shapes --split-lists my_folder/splits

Rerunning the same command over an identical dataset does nothing; after the files changed
it asks for --force.
"""

import argparse
import hashlib
import os
import shlex
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # so `python data_scripts/...` finds the repo

import numpy as np
from PIL import Image, ImageOps

from cli import HelpFormatter, add_data_root, add_progress, int_at_least
from data_scripts import common
from dataset_config import (BUILT_IN, IMPORTER, NAME_PATTERN, SPLITS, DatasetError, DatasetInfo,
                            resolve_data_root)

CLASSES_FILE = "classes.txt"
MASK_MODES = ("1", "L", "P", "I;16", "I;16B", "I;16L", "I;16N", "I")


def fraction(text):
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {text}")
    return value


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("folder", help="the folder holding images/, masks/ and classes.txt (it is only read)")
    p.add_argument("--name", required=True,
                   help="the dataset's name, for --dataset NAME: lower-case letters, digits and _, starting with a "
                        "letter; not a built-in dataset's")
    p.add_argument("--images", default="images", help="folder of the images, relative to FOLDER (default: images)")
    p.add_argument("--masks", default="masks", help="folder of the masks, relative to FOLDER (default: masks)")
    p.add_argument("--mask-suffix", default="",
                   help="what a mask's name adds to its image's name, e.g. _mask for cat.png -> cat_mask.png "
                        "(default: none, the same name)")
    p.add_argument("--classes", default=None,
                   help="the class names, comma-separated, background first (default: read FOLDER/classes.txt, one "
                        "name per line)")
    p.add_argument("--val-fraction", type=fraction, default=0.1,
                   help="share of the pairs for validation, at least one pair (default: 0.1)")
    p.add_argument("--test-fraction", type=fraction, default=0.1,
                   help="share of the pairs for the test, at least one pair (default: 0.1)")
    p.add_argument("--seed", type=int_at_least(0, 2**32 - 1), default=0,
                   help="seed of the random split; the same seed gives the same split (default: 0)")
    p.add_argument("--split-lists", default=None, metavar="DIR",
                   help="split by lists instead: DIR holds train.txt, val.txt and test.txt, one pair name (the "
                        "image's file name, with or without .png) per line; every pair in exactly one list")
    p.add_argument("--force", action="store_true",
                   help="replace the dataset NAME even if it holds another import")
    add_data_root(p)
    add_progress(p, log="one line when the pairs are read")
    return p


# -----------------------------------------------------------------------------
# reading and checking, every problem collected


def class_names(args, folder, problems):
    if args.classes is not None:
        names = [name.strip() for name in args.classes.split(",")]
        origin = "--classes"
    elif (folder / CLASSES_FILE).is_file():
        names = [line.strip() for line in (folder / CLASSES_FILE).read_text().splitlines() if line.strip()]
        origin = str(folder / CLASSES_FILE)
    else:
        problems.append(f"{folder / CLASSES_FILE}: missing; write the class names there (one per line, the "
                        f"background first) or pass --classes background,NAME,...")
        return []
    if len(names) < 2 or not all(names) or len(set(names)) != len(names) or len(names) > 256:
        problems.append(f"{origin}: {names} are not 2-256 different non-empty class names (background first)")
        return []
    return names


def png_files(directory, problems):
    """{file name: path} of the PNG files in `directory`; other files are problems (hidden ones are skipped)."""
    if not directory.is_dir():
        problems.append(f"{directory}: no such folder (see --images and --masks)")
        return {}
    found = {}
    for path in sorted(directory.iterdir()):
        if path.name.startswith("."):
            continue
        if path.suffix.lower() != ".png" or not path.is_file():
            problems.append(f"{path}: not a PNG file (convert it to PNG, or move it out of the folder)")
        else:
            found[path.name] = path
    return found


def pair_files(images_dir, masks_dir, suffix, problems):
    """{pair name: (image path, mask path)}, every image with its mask; the others are problems."""
    images, masks = png_files(images_dir, problems), png_files(masks_dir, problems)
    if images_dir.resolve() == masks_dir.resolve():  # one folder: the suffix tells masks from images
        if not suffix:
            problems.append(f"{images_dir}: images and masks in one folder need --mask-suffix (e.g. _mask)")
            return {}
        images = {n: p for n, p in images.items() if not Path(n).stem.endswith(suffix)}
        masks = {n: p for n, p in masks.items() if Path(n).stem.endswith(suffix)}
    by_image = {Path(n).stem: p for n, p in images.items()}
    by_mask = {}
    for n, p in masks.items():
        stem = Path(n).stem
        if suffix and not stem.endswith(suffix):
            problems.append(f"{p}: a mask's name must end in {suffix}.png (--mask-suffix)")
            continue
        by_mask[stem[:len(stem) - len(suffix)]] = p
    for key in sorted(by_image.keys() - by_mask.keys()):
        problems.append(f"{by_image[key]}: no mask {masks_dir / f'{key}{suffix}.png'}")
    for key in sorted(by_mask.keys() - by_image.keys()):
        problems.append(f"{by_mask[key]}: no image {images_dir / f'{key}.png'}")
    return {key: (by_image[key], by_mask[key]) for key in sorted(by_image.keys() & by_mask.keys())}


def decode(path):
    image = Image.open(path)
    image.load()
    return ImageOps.exif_transpose(image)  # upright as its EXIF tag says, as predict.py and viewers show it


def read_image(path):
    """(uint8 H x W or H x W x 3 array, channels) of an image file; ValueError says why it cannot be used."""
    try:
        image = decode(path)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot be decoded as an image ({e})") from None
    if image.mode in ("I", "F"):
        raise ValueError(f"32-bit ({image.mode}) images are not supported; save it as an 8- or 16-bit PNG")
    if image.mode.startswith("I;16"):
        return np.rint(np.asarray(image, np.float64) / 257).astype(np.uint8), 1
    if "A" in image.mode or image.mode == "P":  # transparent pixels onto black, the background of the tasks
        gray = image.mode == "LA"
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
        return np.asarray(image.convert("L" if gray else "RGB"), np.uint8), 1 if gray else 3
    if image.mode in ("1", "L"):  # the other gray modes (LA, I;16) are handled above
        return np.asarray(image.convert("L"), np.uint8), 1
    return np.asarray(image.convert("RGB"), np.uint8), 3


def read_mask(path, num_classes):
    """uint8 H x W class ids of a mask file; ValueError says why it cannot be used."""
    try:
        mask = decode(path)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot be decoded as an image ({e})") from None
    if mask.mode not in MASK_MODES:
        raise ValueError(f"a {mask.mode} image: a mask holds one class id per pixel (an 8-bit gray or palette PNG), "
                         f"not colours")
    ids = np.asarray(mask, np.int64)
    if ids.min(initial=0) < 0 or ids.max(initial=0) >= num_classes:
        found = sorted(int(i) for i in np.unique(ids) if not 0 <= i < num_classes)
        raise ValueError(f"class id(s) {', '.join(map(str, found[:5]))} but only {num_classes} classes are named "
                         f"(0..{num_classes - 1}); name them in {CLASSES_FILE} or --classes")
    return ids.astype(np.uint8)


def read_pairs(pairs, num_classes, problems):
    """{pair name: (image, mask)} of the pairs that decode and fit; the others are problems."""
    read = {}
    for key, (image_path, mask_path) in common.progress(pairs.items(), "import pairs", "pair"):
        image = mask = None
        try:
            image, channels = read_image(image_path)
        except ValueError as e:
            problems.append(f"{image_path}: {e}")
        try:
            mask = read_mask(mask_path, num_classes)
        except ValueError as e:
            problems.append(f"{mask_path}: {e}")
        if image is None or mask is None:
            continue
        if image.shape[:2] != mask.shape:
            problems.append(f"{mask_path}: {mask.shape[1]}x{mask.shape[0]} pixels, its image {image_path.name} "
                            f"{image.shape[1]}x{image.shape[0]}")
            continue
        read[key] = (image, mask)
    sizes = Counter(image.shape[:2] for image, _ in read.values())
    if len(sizes) > 1:
        (H, W), _ = sizes.most_common(1)[0]
        for key, (image, _) in list(read.items()):
            if image.shape[:2] != (H, W):
                problems.append(f"{pairs[key][0]}: {image.shape[1]}x{image.shape[0]} pixels, the other images "
                                f"{W}x{H}; crop or scale the pair to one size")
                del read[key]
    return read


def split_by_lists(names, lists_dir, problems):
    """{split: [pair name, ...]} from lists_dir/{train,val,test}.txt."""
    lists_dir, splits, seen = Path(lists_dir), {}, {}
    for split in SPLITS:
        path = lists_dir / f"{split}.txt"
        if not path.is_file():
            problems.append(f"{path}: missing (--split-lists needs train.txt, val.txt and test.txt)")
            continue
        splits[split] = []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            key = line.strip()
            key = key[:-4] if key.lower().endswith(".png") else key
            if not key:
                continue
            if key not in names:
                problems.append(f"{path}:{number}: {line.strip()} is not a pair of the folder")
            elif key in seen:
                problems.append(f"{path}:{number}: {key} is already listed in {seen[key]}")
            else:
                seen[key] = f"{split}.txt"
                splits[split].append(key)
        if not splits[split]:
            problems.append(f"{path}: lists no pair; every split needs at least one")
    if len(splits) == len(SPLITS):
        for key in sorted(set(names) - set(seen)):
            problems.append(f"{key}: a pair in no list of {lists_dir}")
    return splits


def split_by_seed(names, val_fraction, test_fraction, seed, problems):
    """{split: [pair name, ...]}: the names in sorted order, permuted by default_rng(seed); the first
    round(val_fraction n) (at least 1) are val, the next round(test_fraction n) test, the rest train."""
    n = len(names)
    n_val, n_test = max(1, round(val_fraction * n)), max(1, round(test_fraction * n))
    if n - n_val - n_test < 1:
        problems.append(f"{n} usable pairs cannot be split into train, val ({n_val}) and test ({n_test}); "
                        f"add pairs or lower --val-fraction / --test-fraction")
        return {}
    in_order = sorted(names)
    order = [in_order[i] for i in np.random.default_rng(seed).permutation(n)]
    return {"train": sorted(order[n_val + n_test:]), "val": sorted(order[:n_val]),
            "test": sorted(order[n_val:n_val + n_test])}


def channels_of(image):
    return 3 if image.ndim == 3 else 1


def as_channels(image, channels):
    """An image as the dataset stores it: gray images copied into 3 channels when others are in colour."""
    return np.repeat(image[..., None], 3, axis=2) if channels == 3 and image.ndim == 2 else image


def file_sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def the_command(args, folder):
    """The command that makes this dataset again, with every flag that differs from its default."""
    words = ["python", IMPORTER, str(folder), "--name", args.name]
    defaults = vars(build_parser().parse_args([args.folder, "--name", args.name]))
    for flag in ("images", "masks", "mask_suffix", "classes", "val_fraction", "test_fraction", "seed"):
        if getattr(args, flag) != defaults[flag]:
            words += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    if args.split_lists is not None:
        words += ["--split-lists", str(Path(args.split_lists).resolve())]
    return " ".join(shlex.quote(word) for word in words)


# -----------------------------------------------------------------------------


def main(argv=None):
    args = common.parse_args(build_parser(), argv)
    folder = Path(args.folder).resolve()
    if not NAME_PATTERN.fullmatch(args.name) or args.name in BUILT_IN:
        raise DatasetError(f"--name {args.name!r}: use lower-case letters, digits and _ (starting with a letter, "
                           f"at most 64), and not a built-in dataset's name ({', '.join(BUILT_IN)})")
    if not folder.is_dir():
        raise DatasetError(f"{args.folder}: no such folder")
    out_dir = resolve_data_root(args.data_root).resolve() / args.name
    if out_dir == folder or out_dir in folder.parents or folder in out_dir.parents:
        raise DatasetError(f"the dataset would be written to {out_dir}, over or inside the folder it is read from; "
                           f"pick another --name or --data-root")
    if not out_dir.is_dir():  # refused before reading every pair; an existing dataset may still need no writing
        common.check_output_folder(out_dir)
    problems = []
    names = class_names(args, folder, problems)
    pairs = pair_files(folder / args.images, folder / args.masks, args.mask_suffix, problems)
    if not pairs and not problems:
        problems.append(f"{folder / args.images}: no PNG images")
    read = read_pairs(pairs, len(names) or 256, problems)  # without names, the other checks still run
    if args.split_lists is not None:
        splits = split_by_lists(pairs, args.split_lists, problems)
    else:
        splits = split_by_seed(list(pairs), args.val_fraction, args.test_fraction, args.seed, problems)
    if problems:
        raise DatasetError(f"{folder}: {len(problems)} problem(s), nothing was written:\n  " + "\n  ".join(problems))

    channels = max(channels_of(image) for image, _ in read.values())
    (H, W), = {image.shape[:2] for image, _ in read.values()}
    info = DatasetInfo(name=args.name, folder=args.name, image_size=(H, W), channels=channels,
                       num_classes=len(names), class_names=tuple(names),
                       paper_split_sizes=tuple(len(splits[s]) for s in SPLITS), create_command=the_command(args, folder),
                       description=f"imported from {folder}", default_seed=args.seed)
    recipe = {"importer": IMPORTER, "command": info.create_command, "source": str(folder),
              "split": (f"lists in {Path(args.split_lists).resolve()}" if args.split_lists is not None else
                        f"seeded: sorted names permuted by numpy default_rng({args.seed}); val "
                        f"{args.val_fraction}, test {args.test_fraction}, the rest train"),
              "names": splits,
              "source_sha256": {os.path.relpath(path, folder): file_sha256(path)
                                for key in sorted(pairs) for path in pairs[key]}}
    files = [f"{s}_{kind}.npy" for s in SPLITS for kind in ("images", "masks")]
    request = common.describe(info, args.seed, {s: len(splits[s]) for s in SPLITS}, files, recipe)
    if common.already_done(out_dir, request, args.force):
        return out_dir
    arrays = {}
    for split in SPLITS:
        images = [as_channels(read[key][0], channels) for key in splits[split]]
        arrays[f"{split}_images"] = np.stack(images)
        arrays[f"{split}_masks"] = np.stack([read[key][1] for key in splits[split]])
    pixels = np.bincount(np.concatenate([arrays[f"{s}_masks"].ravel() for s in SPLITS]), minlength=len(names))
    common.write_dataset(out_dir, arrays, request, {"pixels_per_class": dict(zip(names, pixels.tolist()))},
                         force=args.force)
    root = resolve_data_root(args.data_root).resolve()
    # train.py knows imported datasets of the default data root (./data or $WAVES_DATA_ROOT) by name
    env = "" if root == resolve_data_root().resolve() else f"WAVES_DATA_ROOT={shlex.quote(str(root))} "
    print(f"train on it with: {env}python train.py --dataset {args.name}")
    return out_dir


if __name__ == "__main__":
    common.run_cli(main)
