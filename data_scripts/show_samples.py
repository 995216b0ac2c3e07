"""
Saves a picture of a few samples of a dataset: each image above its mask, the mask
coloured with one fixed colour per class and a legend of the class names.

    python data_scripts/show_samples.py --dataset tetrominoes --split train --n 8
    python data_scripts/show_samples.py --dataset polygons --data-root /tmp/waves_data --out polygons.png
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # so `python data_scripts/...` finds the repo

import plotting
import settings
from cli import HelpFormatter, add_data_root, int_at_least
from data_scripts import common
from dataset_config import BUILT_IN, get_info, load_dataset


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--dataset", required=True,
                        help=f"which dataset: {', '.join(BUILT_IN)}, or one imported under the data root")
    parser.add_argument("--split", default="train", choices=["train", "val", "test"], help="which split")
    parser.add_argument("--n", type=int_at_least(1), default=8, help="number of samples (the first n of the split)")
    parser.add_argument("--out", default=None,
                        help="PNG to write (default: samples_<dataset>.png in $WAVES_FIGURES, "
                             "else <runs root>/figures)")
    add_data_root(parser)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.out and Path(args.out).suffix.lower() != ".png":
        parser.error(f"--out {args.out}: the figure is written as PNG; name a .png file")
    images, masks = load_dataset(args.dataset, args.split, args.data_root, limit=args.n)
    out = Path(args.out) if args.out else settings.figures_dir() / f"samples_{args.dataset}.png"
    fig = plotting.sample_grid(images, masks, get_info(args.dataset, args.data_root).class_names, n=args.n)
    path, = plotting.save_figure(fig, out.stem, out.parent, dpi=80)
    print(f"wrote {path}")


if __name__ == "__main__":
    common.run_cli(main)
