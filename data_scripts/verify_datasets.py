"""
Checks the datasets on disk: every array against the SHA-256 in its dataset.json (nothing
changed since it was written), and Tetrominoes, MNIST and Multi-MNIST against the SHA-256
of the arrays the paper's own generators wrote (docs/methods.md, "Data").

    python data_scripts/verify_datasets.py                  # every dataset under the data root
    python data_scripts/verify_datasets.py tetrominoes --data-root /tmp/waves_data

Exit status 0 when every dataset found is intact and every one made with the paper's seed
and sizes equals the paper's arrays; 1 otherwise. Datasets not created yet are listed.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # so `python data_scripts/...` finds the repo

from cli import add_data_root, run_main
from dataset_config import (BUILT_IN, DatasetError, DatasetNotFoundError, array_digests, create_command,
                            get_info, imported_datasets, read_metadata)


def verify(name, data_root=None):
    """(ok, report line) for one dataset."""
    info = get_info(name, data_root)
    try:
        meta = read_metadata(name, data_root)
    except DatasetNotFoundError:
        return True, f"{name:12s} not created yet ({create_command(name, data_root)})"
    except DatasetError as e:
        return False, f"{name:12s} {e}"
    actual = array_digests(name, data_root)
    changed = [k for k, digest in meta["sha256"].items() if actual[k] != digest]
    parts = [f"{len(actual) - len(changed)}/{len(actual)} arrays intact"
             + (f" (changed or missing: {', '.join(changed)})" if changed else "")]
    ok = not changed
    if info.paper_sha256:
        equal = [k for k, digest in info.paper_sha256.items() if actual.get(k) == digest]
        parts.append(f"{len(equal)}/{len(info.paper_sha256)} equal to the paper's arrays")
        paper_request = (meta["seed"] == info.default_seed and list(meta["split_sizes"].values())
                         == list(info.paper_split_sizes))
        if len(equal) < len(info.paper_sha256):
            if not paper_request:
                parts[-1] += f" (seed {meta['seed']}, sizes {meta['split_sizes']}: not the paper's)"
            ok = ok and not paper_request
    else:
        parts.append("our own recipe (no paper arrays)" if name in BUILT_IN else "imported (no paper arrays)")
    return ok, f"{name:12s} " + "; ".join(parts)


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("datasets", nargs="*", metavar="DATASET",
                        help=f"which datasets (default: all: {', '.join(BUILT_IN)} and those imported under the data "
                             f"root)")
    add_data_root(parser)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    known = [*BUILT_IN, *imported_datasets(args.data_root)]  # the imported ones of the root checked
    unknown = [name for name in args.datasets if name not in known]
    if unknown:
        parser.error(f"unknown dataset {', '.join(unknown)}; valid names: {', '.join(known)}")
    results = [verify(name, args.data_root) for name in args.datasets or known]
    for _, line in results:
        print(line)
    return 0 if all(ok for ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(run_main(main))
