"""Animate a trained recurrent model's hidden state: the waves (or LSTM states) over time.

    python animate.py runs/tetrominoes/nwm-linear-T100-h2-seed0 --split test --index 0 --channel 0
    python animate.py RUN_DIR --out my_figures --stride 2

Writes <out>/<run name with / -> _>-<split><index>-ch<channel>.gif: each frame shows the
input image, one hidden channel at step t (red up, blue down), the predicted mask and
the true mask; and a .png strip of evenly spaced frames beside it.
"""
import sys
from pathlib import Path

import pretrained
import runs
import settings
from analysis.animation import make_animation
from cli import ArgumentParser, HelpFormatter, add_data_root, int_at_least, run_main
from dataset_config import DatasetError, read_metadata
from models import is_recurrent


def build_parser():
    parser = ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("run_dir", help="a run of a recurrent model (nwm, lstm, gru, rnn): its directory, a checkpoint "
                                        "in it, or a shipped model's name (pretrained.py)")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"], help="which split")
    parser.add_argument("--index", type=int_at_least(0), default=0, help="which image of the split (0 = the first)")
    parser.add_argument("--channel", type=int_at_least(0), default=0, help="which hidden channel to show")
    parser.add_argument("--out", default=None,
                        help="output folder (default: $WAVES_FIGURES/animations, else <runs root>/figures/animations)")
    add_data_root(parser)
    parser.add_argument("--stride", type=int_at_least(1), default=1, help="one GIF frame every this many steps")
    parser.add_argument("--scale", type=int_at_least(1), default=3, help="pixels per image pixel in the GIF")
    return parser


def check(parser, args):
    """Every argument checked against the run and its data before any work."""
    try:
        run_dir, _ = pretrained.resolve(args.run_dir)
    except ValueError as e:
        parser.error(str(e))
    config = runs.load_json(run_dir / runs.CONFIG)
    if not is_recurrent(config["model"]):
        parser.error(f"{run_dir} holds a {config['model']}, which has no hidden state over time; "
                     f"animate a run of nwm, lstm, gru or rnn")
    if args.channel >= config["hidden_channels"]:
        parser.error(f"--channel {args.channel}: the model has {config['hidden_channels']} hidden channels "
                     f"(0..{config['hidden_channels'] - 1})")
    try:
        size = read_metadata(config["dataset"], args.data_root)["split_sizes"][args.split]
    except DatasetError as e:
        parser.error(str(e))
    if args.index >= size:
        parser.error(f"--index {args.index}: the {config['dataset']} {args.split} split holds {size} images "
                     f"(0..{size - 1})")


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    check(parser, args)
    out = Path(args.out) if args.out else settings.figures_dir() / "animations"
    try:
        gif, png = make_animation(args.run_dir, args.split, args.index, args.channel, out, args.data_root,
                                  args.stride, args.scale)
    except (DatasetError, ValueError, OSError) as e:
        sys.exit(f"error: {e}")
    print(f"wrote {gif} and {png}")


if __name__ == "__main__":
    run_main(main)
