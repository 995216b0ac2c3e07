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

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch

from dataset_config import DATASETS, get_info, load_dataset
from data_scripts import common


def class_colours(num_classes):
    """Background black, then tab10's colours (and tab20's beyond 11 classes)."""
    palette = plt.get_cmap("tab10" if num_classes <= 11 else "tab20").colors
    return [(0.0, 0.0, 0.0)] + [palette[i % len(palette)] for i in range(num_classes - 1)]


def save_sample_grid(images, masks, class_names, path, n=8, columns=8):
    """images: N x C x H x W in [0, 1] (as load_dataset returns, torch or numpy), masks: N x H x W
    class ids. Saves the first n samples, each image above its coloured mask, as a PNG."""
    images, masks = np.asarray(images)[:n], np.asarray(masks)[:n]
    n = len(images)
    columns = min(columns, n)
    rows = -(-n // columns)  # ceil
    colours = ListedColormap(class_colours(len(class_names)))
    fig, axes = plt.subplots(2 * rows, columns, figsize=(1.6 * columns, 3.2 * rows + 0.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        row, col = 2 * (i // columns), i % columns
        image = images[i].transpose(1, 2, 0)  # C x H x W -> H x W x C
        axes[row, col].imshow(image if image.shape[2] == 3 else image[:, :, 0], cmap="gray", vmin=0, vmax=1,
                              interpolation="nearest")
        axes[row + 1, col].imshow(masks[i], cmap=colours, vmin=0, vmax=len(class_names) - 1,
                                  interpolation="nearest")
    legend = [Patch(facecolor=c, edgecolor="gray", label=name) for c, name in zip(colours.colors, class_names)]
    fig.legend(handles=legend, loc="lower center", ncol=min(len(class_names), 7), fontsize=8, frameon=False)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.99, bottom=0.5 / (3.2 * rows + 0.6), wspace=0.06, hspace=0.06)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, choices=list(DATASETS), help="which dataset")
    parser.add_argument("--split", default="train", choices=["train", "val", "test"], help="which split")
    parser.add_argument("--n", type=int, default=8, help="number of samples (the first n of the split)")
    parser.add_argument("--out", default=None, help="PNG to write (default: results/figures/samples_<dataset>.png)")
    parser.add_argument("--data-root", default=None, help="data root (default: $WAVES_DATA_ROOT or ./data)")
    args = parser.parse_args(argv)
    images, masks = load_dataset(args.dataset, args.split, args.data_root, limit=args.n)
    out = args.out or f"results/figures/samples_{args.dataset}.png"
    save_sample_grid(images, masks, get_info(args.dataset).class_names, out, n=args.n)
    print(f"wrote {out}")


if __name__ == "__main__":
    common.run_cli(main)
