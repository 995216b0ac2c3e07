"""Animations of a trained recurrent model's hidden state: the waves (or LSTM states) over time.

Each GIF frame shows the input image, one hidden channel at step t (red up, blue down),
the predicted mask and the true mask; a PNG strip of evenly spaced frames goes beside it.
"""
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageDraw

import plotting
import pretrained
import settings
from analysis.trained import hidden_sequence
from dataset_config import load_dataset

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


def write_animation(model, image, num_classes, out_dir, stem, title, true_mask=None, channel=0, stride=1,
                    scale=3, frame_ms=80, strip_frames=8):
    """Writes <out_dir>/<stem>.gif of a recurrent model's hidden channel over time on one
    C x H x W image (one frame per `stride` steps; beside the wave: the input, the predicted
    mask and, if given, the true one) and <stem>.png, a strip of evenly spaced frames.
    Returns (gif, png) paths."""
    logits, sequence = hidden_sequence(model, image)
    waves = sequence[:, channel].numpy()  # T x H x W
    limit = float(np.abs(waves).max()) or 1.0
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    rgb_image = (image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    if rgb_image.shape[2] == 1:
        rgb_image = np.repeat(rgb_image, 3, axis=2)
    cmap = plotting.mask_cmap(num_classes)
    fixed = [_panel(rgb_image, "input", scale),
             _panel(_to_rgb(logits.argmax(0), cmap, 0, num_classes - 1), "predicted", scale)]
    if true_mask is not None:
        fixed.append(_panel(_to_rgb(true_mask, cmap, 0, num_classes - 1), "true", scale))
    frames = [_row([fixed[0], _panel(_to_rgb(waves[t], plotting.WAVE_CMAP, -limit, limit), f"t={t + 1}", scale),
                    *fixed[1:]]) for t in range(0, len(waves), stride)]
    gif = out_dir / f"{stem}.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=frame_ms, loop=0)
    png = plotting.save_figure(plotting.hidden_frame_strip(waves, strip_frames, title, limit), stem, out_dir)[0]
    return gif, png


def make_animation(run_dir, split="test", index=0, channel=0, out_dir=None, data_root=None, stride=1, scale=3):
    """write_animation for image `index` of a split of the run's dataset, into
    <out_dir>/<run>-<split><index>-ch<channel>.gif and .png; `out_dir` defaults to the
    animations folder under settings.figures_dir()."""
    model = pretrained.load(run_dir)  # the class names the run recorded: imported datasets too
    config = model.config
    if not model.recurrent:
        raise ValueError(f"{run_dir} holds a {config['model']}, which has no hidden state over time")
    images, masks = load_dataset(config["dataset"], split, data_root, limit=index + 1)
    out_dir = Path(out_dir) if out_dir is not None else settings.figures_dir() / "animations"
    stem = f"{config['run_name'].replace('/', '_')}-{split}{index}-ch{channel}"
    title = f"{config['run_name']}: hidden channel {channel}, {split} image {index}"
    return write_animation(model, images[index], len(model.class_names), out_dir, stem, title,
                           masks[index], channel, stride, scale)
