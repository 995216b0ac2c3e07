"""Animate a trained recurrent model's hidden state: the waves (or LSTM states) over time.

    python animate.py runs/tetrominoes/nwm-linear-T100-h2-seed0 --split test --index 0 --channel 0
    python animate.py RUN_DIR --out results/figures/animations --stride 2

Writes <out>/<run name with / -> _>-<split><index>-ch<channel>.gif: each frame shows the
input image, one hidden channel at step t (red up, blue down), the predicted mask and
the true mask; and a .png strip of evenly spaced frames beside it.
"""
import argparse
import sys

import matplotlib
import numpy as np
from PIL import Image, ImageDraw

import analysis
import plotting
import runs
from dataset_config import DatasetError, get_info, load_dataset

LABEL_HEIGHT = 12  # pixels of caption above each panel


def _to_rgb(array, cmap, vmin, vmax):
    """H x W values -> H x W x 3 uint8 through a matplotlib colour map."""
    colours = matplotlib.colormaps[cmap] if isinstance(cmap, str) else cmap
    normalised = (np.asarray(array, float) - vmin) / max(vmax - vmin, 1e-12)
    return (colours(np.clip(normalised, 0, 1))[..., :3] * 255).astype(np.uint8)


def _panel(rgb, caption, scale):
    """An upscaled (nearest) panel with a caption strip above it."""
    image = Image.fromarray(rgb).resize((rgb.shape[1] * scale, rgb.shape[0] * scale), Image.NEAREST)
    panel = Image.new("RGB", (image.width, image.height + LABEL_HEIGHT), "white")
    panel.paste(image, (0, LABEL_HEIGHT))
    ImageDraw.Draw(panel).text((2, 0), caption, fill="black")
    return panel


def _row(panels, gap=4):
    width = sum(p.width for p in panels) + gap * (len(panels) - 1)
    row = Image.new("RGB", (width, max(p.height for p in panels)), "white")
    x = 0
    for p in panels:
        row.paste(p, (x, 0))
        x += p.width + gap
    return row


def make_animation(run_dir, split="test", index=0, channel=0, out_dir=None, data_root=None, stride=1,
                   scale=3, frame_ms=80, strip_frames=8):
    """Writes the GIF (one frame per `stride` steps) and the PNG strip; returns (gif, png) paths."""
    model, config = runs.load_model(run_dir)
    if not getattr(model, "recurrent", False):
        raise ValueError(f"{run_dir} holds a {config['model']}, which has no hidden state over time")
    info = get_info(config["dataset"])
    images, masks = load_dataset(config["dataset"], split, data_root, limit=index + 1)
    image, mask = images[index], masks[index]
    logits, sequence = analysis.hidden_sequence(model, image)
    waves = sequence[:, channel].numpy()  # T x H x W
    limit = float(np.abs(waves).max()) or 1.0

    out_dir = plotting.figures_dir(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{config['run_name'].replace('/', '_')}-{split}{index}-ch{channel}"

    rgb_image = (image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    if rgb_image.shape[2] == 1:
        rgb_image = np.repeat(rgb_image, 3, axis=2)
    cmap = plotting.mask_cmap(info.num_classes)
    fixed = [_panel(rgb_image, "input", scale),
             _panel(_to_rgb(logits.argmax(0), cmap, 0, info.num_classes - 1), "predicted", scale),
             _panel(_to_rgb(mask, cmap, 0, info.num_classes - 1), "true", scale)]
    frames = [_row([fixed[0], _panel(_to_rgb(waves[t], plotting.WAVE_CMAP, -limit, limit),
                                     f"{config['model']} t={t + 1}", scale), *fixed[1:]])
              for t in range(0, len(waves), stride)]
    gif = out_dir / f"{stem}.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=frame_ms, loop=0)

    fig = plotting.hidden_frame_strip(waves, strip_frames, f"{config['run_name']}: hidden channel {channel}, "
                                                            f"{split} image {index}", limit)
    png = plotting.save_figure(fig, stem, out_dir)[0]
    return gif, png


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a finished run of a recurrent model (nwm, lstm, gru, rnn)")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    parser.add_argument("--index", type=int, default=0, help="which image of the split")
    parser.add_argument("--channel", type=int, default=0, help="which hidden channel to show")
    parser.add_argument("--out", default=None, help="output folder (default: $WAVES_FIGURES or results/figures)")
    parser.add_argument("--data-root", default=None, help="data root (default: $WAVES_DATA_ROOT or ./data)")
    parser.add_argument("--stride", type=int, default=1, help="one GIF frame every this many steps")
    parser.add_argument("--scale", type=int, default=3, help="pixels per image pixel in the GIF")
    args = parser.parse_args(argv)
    try:
        gif, png = make_animation(args.run_dir, args.split, args.index, args.channel, args.out, args.data_root,
                                  args.stride, args.scale)
    except (DatasetError, ValueError, OSError) as e:
        sys.exit(f"error: {e}")
    print(f"wrote {gif} and {png}")


if __name__ == "__main__":
    main()
