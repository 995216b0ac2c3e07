"""Segment your own images with a trained model: a coloured mask per image.

    python predict.py my_shapes.png --model polygons/nwm --out predictions/
    python predict.py photos/ --model runs/tetrominoes/nwm-linear-T100-h2-seed0 --out predictions/ --resize
    python predict.py digit.jpg --model RUN_DIR/checkpoint.pt --invert --save-ids --animate --out predictions/

--model is a shipped model (tetrominoes/nwm, tetrominoes/lstm, tetrominoes/cnn, polygons/nwm;
see pretrained.py for what each was trained on), a run directory, or a checkpoint inside
one. Inputs are PNG or JPEG files, or folders of them. Each image is converted to what the
model expects: RGB or gray (alpha composited onto black, as the training images' background),
8- or 16-bit values scaled to [0, 1]; its size must be the training images' size (or pass
--resize). For each image, --out gets <name>_mask.png (the classes in the project's colours,
at the image's size) and <name>_panel.png (image beside mask, with a legend); --save-ids adds
<name>_classes.npy (uint8 class ids), --animate <name>_waves.gif (the hidden state over time,
recurrent models only).
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import plotting
import pretrained
import settings
from analysis.animation import write_animation
from cli import HelpFormatter, add_device, add_threads, int_at_least
from dataset_config import get_info

EXTENSIONS = (".png", ".jpg", ".jpeg")


class ImageError(ValueError):
    pass


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("inputs", nargs="+", help="PNG or JPEG files, or folders of them")
    p.add_argument("--model", required=True, help="a shipped model name, a run directory, or a checkpoint in one")
    p.add_argument("--out", required=True, help="folder for the masks (created if missing)")
    p.add_argument("--resize", action="store_true",
                   help="scale images of another size to the training images' size (bilinear) instead of refusing them")
    p.add_argument("--invert", action="store_true",
                   help="use 1 - value: for dark objects on a light background (the models saw bright ones on black)")
    p.add_argument("--save-ids", action="store_true", help="also write <name>_classes.npy, the class id of every pixel")
    p.add_argument("--animate", action="store_true", help="also write <name>_waves.gif, the hidden state over time")
    p.add_argument("--channel", type=int_at_least(0), default=0, help="hidden channel that --animate shows")
    add_device(p)
    add_threads(p)
    return p


def image_paths(inputs):
    """The image files named, folders expanded (sorted); ImageError for what is neither."""
    paths = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in EXTENSIONS)
            if not found:
                raise ImageError(f"{path}: a folder without PNG or JPEG files")
            paths += found
        elif path.is_file():
            if path.suffix.lower() not in EXTENSIONS:
                raise ImageError(f"{path}: not a PNG or JPEG file (convert it to PNG first)")
            paths.append(path)
        else:
            raise ImageError(f"{path}: no such file or folder")
    return paths


def to_model_input(path, channels, size, resize=False, invert=False):
    """The image at `path` as the model's input (channels x H x W, float32 in [0, 1]) and the
    conversions made, in words; ImageError when it cannot be converted."""
    try:
        image = Image.open(path)
        image.load()
    except OSError as e:
        raise ImageError(f"{path}: cannot be read as an image ({e})") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"{path}: too large to decode safely ({e}); scale it down to the model's "
                         f"{size[1]}x{size[0]} pixels first") from None
    notes = []
    if image.mode.startswith("I;16"):
        values = np.asarray(image, np.float32) / 65535  # 16-bit gray
    elif image.mode in ("I", "F"):
        raise ImageError(f"{path}: 32-bit ({image.mode}) images are not supported; save it as an 8- or 16-bit PNG")
    else:
        if "A" in image.mode or image.mode == "P":  # transparent pixels: onto black, the training background
            rgba = image.convert("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
            notes.append("transparency composited onto black")
        image = image.convert("RGB" if image.mode not in ("L", "1") else "L")
        values = np.asarray(image, np.float32) / 255
    values = values[..., None] if values.ndim == 2 else values
    if values.shape[2] != channels:
        notes.append("gray copied into 3 channels" if channels == 3 else "converted to gray (luminance)")
        values = (np.repeat(values, 3, axis=2) if channels == 3
                  else (values @ np.array([0.299, 0.587, 0.114], np.float32))[..., None])
    x = torch.from_numpy(np.ascontiguousarray(values)).permute(2, 0, 1)
    if tuple(x.shape[1:]) != tuple(size):
        if not resize:
            raise ImageError(f"{path}: {x.shape[2]}x{x.shape[1]} pixels, but the model was trained on "
                             f"{size[1]}x{size[0]} images: crop or scale it to that size, or pass --resize")
        notes.append(f"resized from {x.shape[2]}x{x.shape[1]}")
        x = F.interpolate(x[None], size=tuple(size), mode="bilinear", align_corners=False, antialias=True)[0]
    if invert:
        x = 1 - x
        notes.append("inverted")
    elif x.mean() > 0.5:
        notes.append("mostly bright: the models were trained on bright objects on black; if the objects here "
                     "are dark, pass --invert")
    return x.clamp(0, 1), notes


def coloured(mask, num_classes):
    """H x W class ids -> H x W x 3 uint8 in the project's class colours."""
    palette = (np.array(plotting.class_colours(num_classes)) * 255).round().astype(np.uint8)
    return palette[mask]


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        device = settings.pick_device(args.device)
        model = pretrained.load(args.model, device)
        paths = image_paths(args.inputs)
    except ValueError as e:
        parser.error(str(e))
    settings.set_threads(args.threads)
    config, class_names = model.config, model.class_names
    info = get_info(config["dataset"])
    if args.animate and not model.recurrent:
        parser.error(f"--animate: a {config['model']} has no hidden state over time; use an nwm or lstm model")
    if args.animate and args.channel >= config["hidden_channels"]:
        parser.error(f"--channel {args.channel}: the model has {config['hidden_channels']} hidden channels")
    inputs, problems = {}, []
    for path in paths:  # every image checked before anything is written
        try:
            inputs[path] = to_model_input(path, info.channels, info.image_size, args.resize, args.invert)
        except ImageError as e:
            problems.append(str(e))
    if problems:
        parser.error("\n  ".join(["these images cannot be used:"] + problems))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for path, (x, notes) in inputs.items():
        with torch.no_grad():
            mask = model(x[None].to(device)).argmax(1)[0].cpu()
        Image.fromarray(coloured(mask.numpy(), len(class_names))).save(out / f"{path.stem}_mask.png")
        fig = plotting.prediction_panel(x, mask, class_names, path.name)
        plotting.save_figure(fig, f"{path.stem}_panel", out)
        if args.save_ids:
            np.save(out / f"{path.stem}_classes.npy", mask.numpy().astype(np.uint8))
        if args.animate:
            write_animation(model.cpu(), x, len(class_names), out, f"{path.stem}_waves", f"{path.name}: hidden "
                            f"channel {args.channel}", channel=args.channel)
            model.to(device)
        counts = torch.bincount(mask.flatten(), minlength=len(class_names))
        found = ", ".join(f"{class_names[c]} {int(n)} px" for c, n in enumerate(counts) if c and n) or "background only"
        print(f"{path} -> {out / f'{path.stem}_mask.png'}: {found}" + (f" ({'; '.join(notes)})" if notes else ""))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
