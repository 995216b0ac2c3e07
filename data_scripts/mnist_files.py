"""
The four standard MNIST files: getting them, checking them, reading them.

Mirrors serve the files gzip'd, other sources uncompressed or re-compressed, so what is
pinned is the *decompressed* content (its MD5): `name` or `name.gz` from any source is
accepted when it decompresses to the standard bytes, and so is Kaggle's spelling of the
names (`train-images.idx3-ubyte`). The files are kept, their bytes as they came, under the
standard names in <data root>/mnist/raw/.
"""

import gzip
import hashlib
import shutil
import struct
import urllib.request
from pathlib import Path

import numpy as np

from dataset_config import DatasetError, directory_lock, how_to_create, resolve_data_root

# MD5 of each file's decompressed content (the usual mirrors' .gz files differ in MD5
# from one compression to the next; their content does not)
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
PREFIX = {"train": "train", "test": "t10k"}  # file name prefix of each MNIST part
GZIP_MAGIC = b"\x1f\x8b"


def raw_dir_of(data_root=None):
    return resolve_data_root(data_root) / "mnist" / "raw"


def read_bytes(path):
    """A file's content, decompressed when it is gzip'd (whatever its name)."""
    with open(path, "rb") as f:
        compressed = f.read(2) == GZIP_MAGIC
    opener = gzip.open if compressed else open
    try:
        with opener(path, "rb") as f:
            return f.read()
    except (OSError, EOFError) as e:  # a truncated or damaged .gz
        raise DatasetError(f"{path}: cannot be decompressed ({e}); get the file again") from None


def content_md5(path):
    return hashlib.md5(read_bytes(path)).hexdigest()


def find_file(folder, name):
    """`name` or `name.gz` in folder, or the same in Kaggle's spelling (train-images.idx3-ubyte), or None."""
    for spelling in (name, name.replace("-idx", ".idx")):
        for candidate in (Path(folder) / spelling, Path(folder) / f"{spelling}.gz"):
            if candidate.is_file():
                return candidate
    return None


def check_file(path, name, md5):
    actual = content_md5(path)
    if actual != md5:
        raise DatasetError(f"{path}: decompressed MD5 is {actual}, expected {md5}: it is not the standard "
                           f"MNIST file {name} (damaged, or another data set); get it again")


def _download(name, dest_dir, md5):
    """Fetches name.gz from the first mirror that serves it, checked against md5; returns the path."""
    failures = []
    dest = Path(dest_dir) / f"{name}.gz"
    part = dest.with_name(dest.name + ".part")
    for mirror in MIRRORS:
        url = f"{mirror}{name}.gz"
        print(f"downloading {url}")
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as f:
                shutil.copyfileobj(response, f)
            check_file(part, name, md5)
            part.rename(dest)
            return dest
        except (OSError, DatasetError) as e:  # URLError and timeouts are OSErrors
            failures.append(f"{url}: {e}")
            part.unlink(missing_ok=True)
    raise DatasetError(f"could not download {name}:\n  " + "\n  ".join(failures) +
                       f"\nWithout internet: put the four MNIST files ({', '.join(MNIST_MD5)}; gzip'd or not, "
                       f"from any source) in a folder DIR and run: "
                       f"python data_scripts/download_mnist.py --from-dir DIR")


def checked_sources(from_dir, checksums=MNIST_MD5):
    """{name: path} of the MNIST files in from_dir, every one checked; one DatasetError naming every
    file that is missing, unreadable or not the standard file."""
    from_dir = Path(from_dir)
    if not from_dir.is_dir():
        raise DatasetError(f"--from-dir {from_dir}: not a folder; it names the folder that holds the four MNIST "
                           f"files: {', '.join(checksums)}")
    missing = [name for name in checksums if find_file(from_dir, name) is None]
    if missing:
        raise DatasetError(f"--from-dir {from_dir}: missing {', '.join(missing)} (as the file itself or "
                           f"gzip'd with .gz, under that name or Kaggle's train-images.idx3-ubyte); it needs all "
                           f"four MNIST files: {', '.join(checksums)}")
    sources, problems = {}, []
    for name, md5 in checksums.items():
        sources[name] = find_file(from_dir, name)
        try:
            actual = content_md5(sources[name])
        except DatasetError as e:
            problems.append(str(e))
            continue
        except OSError as e:
            problems.append(f"{sources[name]}: cannot be read ({e.strerror or e})")
            continue
        if actual != md5:
            problems.append(f"{sources[name]}: decompressed MD5 is {actual}, expected {md5}: not the standard "
                            f"MNIST file {name}")
    if problems:
        raise DatasetError(f"--from-dir {from_dir}: {len(problems)} of the {len(checksums)} files cannot be used "
                           f"(damaged, or another data set); get them again:\n  " + "\n  ".join(problems))
    return sources


def fetch_raw(raw_dir, from_dir=None, checksums=MNIST_MD5):
    """Makes sure raw_dir holds each file of `checksums` with the right content, copying it
    from `from_dir` (every file checked first) or downloading it. Returns {name: path}. A file
    arrives as .part and is renamed once checked, so raw_dir never holds a half-copied file
    under its real name; fetchers take turns, and remove the .part files of killed ones."""
    sources = checked_sources(from_dir, checksums) if from_dir is not None else None
    raw_dir = Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    with directory_lock(raw_dir) as held:
        if held:
            for part in raw_dir.glob("*.part"):
                part.unlink()
        return _fetch_locked(raw_dir, sources, checksums)


def _fetch_locked(raw_dir, sources, checksums):
    paths = {}
    for name, md5 in checksums.items():
        present = find_file(raw_dir, name)
        if present is not None and content_md5(present) == md5:
            paths[name] = present
            continue
        if present is not None:
            present.unlink()  # damaged or foreign: replaced below
        if sources is None:
            paths[name] = _download(name, raw_dir, md5)
            continue
        dest = raw_dir / (f"{name}.gz" if sources[name].suffix == ".gz" else name)  # the standard name
        part = dest.with_name(dest.name + ".part")
        shutil.copyfile(sources[name], part)
        part.rename(dest)
        paths[name] = dest
    return paths


def read_idx(path):
    """An IDX file (gzip'd or not) as a uint8 array. Format: 2 zero bytes, type 0x08
    (unsigned byte), number of dimensions, each dimension as a big-endian uint32, the data."""
    data = read_bytes(path)
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


def load_digits(raw_dir, part, checksums=MNIST_MD5):
    """(images N x 28 x 28, labels N) of MNIST's "train" or "test" part, checked."""
    arrays = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        name = f"{PREFIX[part]}-{kind}"
        path = find_file(raw_dir, name)
        if path is None:
            raise DatasetError(f"{Path(raw_dir) / name} not found; get the MNIST files with:\n"
                               f"{how_to_create('mnist', Path(raw_dir).parent.parent)}")  # raw_dir_of's data root
        check_file(path, name, checksums[name])
        arrays.append(read_idx(path))
    images, labels = arrays
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.ndim != 1:
        raise DatasetError(f"MNIST {part} files in {raw_dir}: shapes {images.shape} and {labels.shape}, "
                           f"expected N x 28 x 28 images and N labels")
    if len(images) != len(labels) or labels.max(initial=0) > 9:
        raise DatasetError(f"MNIST {part} files in {raw_dir}: {len(images)} images but {len(labels)} labels, "
                           f"labels up to {labels.max(initial=0)}")
    return images, labels
