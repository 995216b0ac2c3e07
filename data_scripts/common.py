"""
Shared pieces of the dataset programs in data_scripts/: the command-line flags, the
per-split random streams of our own Polygons recipe (the paper's generators draw every
split from one stream, see each program), and all-or-nothing writing of a dataset folder
with the SHA-256 of every array in its dataset.json.
"""

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cli import add_data_root, add_progress, int_at_least, run_main, shows_bars
from dataset_config import (DATASETS, FORMAT_VERSION, METADATA, SPLITS, DatasetError, array_sha256, directory_lock,
                            finish_interrupted_writes, resolve_data_root)

# -----------------------------------------------------------------------------
# command line


def make_parser(info, doc, generated=True):
    """The flags every dataset program shares; `generated` adds the split sizes."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_root(parser)
    parser.add_argument("--out", default=None, help=f"output folder (default: <data root>/{info.folder})")
    origin = "our recipe's" if not info.paper_sha256 else "the paper's"
    parser.add_argument("--seed", type=int_at_least(0, 2**32 - 1), default=info.default_seed,  # numpy's seed range
                        help=f"random seed; the same seed gives byte-identical files (default: {info.default_seed}, "
                             f"{origin})")
    parser.add_argument("--force", action="store_true",
                        help="re-create the dataset even if the output folder already holds one (any recipe)")
    add_progress(parser, log="one line per split")
    if generated:
        for split, size in zip(info.splits, info.paper_split_sizes):
            parser.add_argument(f"--{split}", type=int_at_least(1), default=size,
                                help=f"number of {split} images (default: {size}, the paper's)")
    return parser


_bars = True  # --no-progress of the program running


def parse_args(parser, argv=None):
    """parser.parse_args, with its --no-progress applied to the program's progress bars."""
    global _bars
    args = parser.parse_args(argv)
    _bars = args.progress
    return args


def progress(iterable, desc, unit):
    """`iterable` with a progress bar on a terminal; elsewhere (a log) one plain line when it is done."""
    if shows_bars(_bars):
        yield from tqdm(iterable, desc=desc, unit=unit)
        return
    count = 0
    for count, item in enumerate(iterable, 1):
        yield item
    print(f"{desc}: {count} {unit}", flush=True)


def output_dir(args, info):
    return Path(args.out) if args.out else resolve_data_root(args.data_root) / info.folder


def refuse_link(out_dir):
    """A dataset folder that is a symbolic link is written where it points, not through it: write_dataset's
    swap of folders would replace the link itself."""
    if Path(out_dir).is_symlink():
        raise DatasetError(f"{out_dir} is a symbolic link to {Path(out_dir).resolve()}; write the dataset there: "
                           f"--data-root {Path(out_dir).resolve().parent}")


def run_cli(main):
    """Runs a program's main(); dataset errors, file system errors the checks before the work could
    not foresee (a disk that fills up) and Ctrl-C end it with a message, not a traceback."""
    try:
        run_main(main)  # a reader gone from stdout (| head) ends it quietly
    except DatasetError as e:
        sys.exit(f"error: {e}")
    except OSError as e:
        sys.exit(f"error: {e.filename or ''}: {e.strerror or e} (no dataset was changed; no partial copy is left)")
    except KeyboardInterrupt:
        print("interrupted: no dataset was changed and no partial copy is left; the same command starts again",
              file=sys.stderr)
        sys.exit(130)

# -----------------------------------------------------------------------------
# generation


def split_rngs(seed):
    """One independent generator per split, so e.g. changing --test leaves train unchanged."""
    return dict(zip(SPLITS, (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(len(SPLITS)))))


def image_digest(image):
    return hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=16).digest()


def generate_splits(make_sample, sizes, seed, desc):
    """Draws sizes[split] samples per split with make_sample(rng) -> (image, mask, info).
    A val or test sample whose image equals an image of an earlier split is redrawn, so
    test never repeats a train/val image and val never repeats a train image.
    Returns ({"train_images": array, "train_masks": array, ...}, {split: [info, ...]},
    {split: number of redrawn samples})."""
    arrays, infos, redrawn, seen = {}, {}, {}, set()
    for split, rng in split_rngs(seed).items():
        images, masks, infos[split], redrawn[split], digests = None, None, [], 0, set()
        for i in progress(range(sizes[split]), f"{desc} {split}", "img"):
            image, mask, info = make_sample(rng)
            while split != "train" and image_digest(image) in seen:
                redrawn[split] += 1
                image, mask, info = make_sample(rng)
            if images is None:
                images = np.zeros((sizes[split],) + image.shape, np.uint8)
                masks = np.zeros((sizes[split],) + mask.shape, np.uint8)
            images[i], masks[i] = image, mask
            infos[split].append(info)
            digests.add(image_digest(image))
        seen |= digests
        arrays[f"{split}_images"], arrays[f"{split}_masks"] = images, masks
    return arrays, infos, redrawn


# -----------------------------------------------------------------------------
# all-or-nothing writing


def describe(info, seed, split_sizes, files, recipe):
    """The part of dataset.json that says what was asked for; a rerun compares exactly this.
    split_sizes None: they follow from the source (MNIST), and are added when writing."""
    request = {"format_version": FORMAT_VERSION, "dataset": info.name, "seed": seed}
    if split_sizes is not None:
        request["split_sizes"] = split_sizes
    request.update(image_size=list(info.image_size), channels=info.channels,
                   class_names=list(info.class_names), files=files, recipe=recipe)
    return json.loads(json.dumps(request))  # as it will read back from the file (lists, str keys)


def check_output_folder(out_dir):
    """Refuses, before any work, an output folder that cannot be made or replaced: a file in its
    place or above it, a symbolic link (refuse_link), or a folder this process may not write in
    (permissions, a read-only file system)."""
    out_dir = Path(out_dir)
    refuse_link(out_dir)
    existing = next(path for path in (out_dir, *out_dir.parents) if path.exists())
    if not existing.is_dir():
        raise DatasetError(f"{existing} is a file, not a folder, so no dataset can be written to {out_dir}; "
                           f"pick another --data-root (or --out)")
    target = out_dir.parent if existing == out_dir else existing  # the new folder is made (or swapped in) here
    if not os.access(target, os.W_OK | os.X_OK):
        raise DatasetError(f"cannot write in {target} (no permission, or a read-only file system), so no dataset "
                           f"can be written to {out_dir}; pick another --data-root (or --out)")


def already_done(out_dir, request, force, keep=()):
    """True if out_dir already holds a complete dataset made with this request (nothing to do).
    Raises if it holds something else, unless --force, or if the dataset cannot be written there.
    `keep` names entries of out_dir that are not part of the dataset and survive a rewrite (MNIST's raw/ folder)."""
    out_dir = Path(out_dir)
    if force or not out_dir.is_dir():
        check_output_folder(out_dir)
        return False
    meta_path = out_dir / METADATA
    if not meta_path.is_file():
        others = sorted(set(os.listdir(out_dir)) - set(keep))
        if others:
            raise DatasetError(f"{out_dir} exists but is not a dataset (no {METADATA}; it holds "
                               f"{', '.join(others[:5])}{', ...' if len(others) > 5 else ''}); "
                               f"re-run with --force to replace it, or pick another --out")
        check_output_folder(out_dir)
        return False
    try:
        old = json.loads(meta_path.read_text())
    except ValueError:
        raise DatasetError(f"{meta_path} is unreadable; re-run with --force to re-create the dataset") from None
    changed = [key for key in request if old.get(key) != request[key]]
    if changed:
        if "recipe" in changed:  # name the recipe entries, not just "recipe"
            old_recipe = old.get("recipe") or {}
            changed.remove("recipe")
            changed += [f"recipe.{k}" for k in request["recipe"] if old_recipe.get(k) != request["recipe"][k]]
        raise DatasetError(f"{out_dir} holds a dataset made with a different recipe (differs in: "
                           f"{', '.join(changed)}); re-run with --force to replace it")
    missing = [f for f in request["files"] if not (out_dir / f).is_file()]
    if missing:
        raise DatasetError(f"{out_dir} is incomplete (missing {', '.join(missing)}); re-run with --force")
    print(f"{out_dir} already holds this dataset (same recipe): nothing to do. Use --force to re-create it.")
    return True


def compare_with_paper(name, digests):
    """(True if every array the paper pinned is here with the paper's SHA-256, a line saying so)."""
    paper = DATASETS[name].paper_sha256 if name in DATASETS else {}  # an imported one is not in the table yet
    if not paper:
        return None, f"{name}: our own recipe, no paper arrays to compare with"
    equal = [k for k in paper if digests.get(k) == paper[k]]
    if len(equal) == len(paper):
        return True, f"{name}: all {len(paper)} arrays equal the paper's, byte for byte (SHA-256)"
    return False, (f"{name}: {len(paper) - len(equal)} of {len(paper)} arrays differ from the paper's "
                   f"(expected with another seed or other sizes)")


def write_dataset(out_dir, arrays, request, stats=None, keep=(), force=True):
    """Writes {name}.npy for every array plus dataset.json (the request, the SHA-256 of every
    array, whether they are the paper's, `stats`) into a temporary sibling folder, then
    renames it into place, so out_dir is never half written: a crash while writing leaves
    the old state. An existing out_dir is replaced (the caller checked --force); the
    entries named in `keep` are carried over from it. Writers of one folder's datasets take
    turns (directory_lock), and each first cleans up what killed writers left there
    (dataset_config.finish_interrupted_writes). force=False, what the programs pass without
    --force, checks out_dir again under the lock, since another creation may have written it
    after the caller's already_done: an identical dataset is kept, another one is refused.
    Returns the metadata (None when an identical dataset was already there)."""
    out_dir = Path(out_dir)
    refuse_link(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with directory_lock(out_dir.parent) as held:
        if held:
            finish_interrupted_writes(out_dir)
        if not force and already_done(out_dir, request, False, keep):
            return None
        return _write_locked(out_dir, arrays, request, stats, keep)


def _write_locked(out_dir, arrays, request, stats, keep):
    digests = {name: array_sha256(array) for name, array in arrays.items()}
    if request["recipe"].get("importer"):
        paper_identical, verdict = None, f"{request['dataset']}: imported, no paper arrays to compare with"
    else:
        paper_identical, verdict = compare_with_paper(request["dataset"], digests)
    meta = {**request, "sha256": digests, "paper_identical": paper_identical, "stats": stats or {}}
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the dataset folder should not be
    try:
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", array)
        (tmp / METADATA).write_text(json.dumps(meta, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # the swap is a few renames in one folder; if one fails, nothing has been deleted yet
    if out_dir.exists():
        old = out_dir.parent / tmp.name.replace(".tmp-", ".old-")
        os.rename(out_dir, old)
        for entry in keep:
            if (old / entry).exists():
                os.rename(old / entry, tmp / entry)
        os.rename(tmp, out_dir)
        shutil.rmtree(old)
    else:
        os.rename(tmp, out_dir)
    print(f"wrote {out_dir}\n{verdict}")
    return meta
