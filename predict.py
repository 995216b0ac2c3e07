"""Segment your own images with a trained model: a coloured mask per image.

    python predict.py my_shapes.png --model polygons/nwm --out predictions/
    python predict.py photos/ --model runs/tetrominoes/nwm-linear-T100-h2-seed0 --out predictions/ --resize
    python predict.py digit.jpg --model RUN_DIR/checkpoint.pt --invert --save-ids --animate --out predictions/
    python predict.py my_digits/ --model multi_mnist/unet --out predictions/ --sheet   # and all in one figure

--model is a shipped model (pretrained.SHIPPED, listed under --model below; `python
pretrained.py` says what each was trained on), a run directory (or any file in one but a
checkpoint), or a checkpoint inside one. Inputs are PNG or JPEG files, or folders of them
(their regular files only, not hidden ones; each file is taken once). Each image is converted to what the
model expects: turned upright as its EXIF orientation says, RGB or gray (alpha composited onto
black, as the training images' background), 8- or 16-bit values scaled to [0, 1]; its size
must be the training images' size (or pass --resize); of an animated or multi-page file only
the first frame is used, and said so. For each image, --out gets <name>_mask.png (the
classes in the project's colours, at the image's size, --resize or not) and <name>_panel.png
(image beside mask, with a legend); --save-ids adds <name>_classes.npy (uint8 class ids, at
the image's size), --animate <name>_waves.gif (the hidden state over time at the model's
size, recurrent models only) and <name>_waves.png (a strip of its frames); --sheet writes
sheet.png, the first images above their masks in one figure. <name> is the file's name
without its extension, or <name>-2, -3... when another input has the same name (a/x.png and
b/x.png, y.png and y.jpg) or an output would overwrite an input (sheet-2 where sheet.png is
an input); each output file is written whole or not at all.
"""
import contextlib
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

import plotting
import pretrained
import settings
from analysis.animation import write_animation
from cli import ArgumentParser, HelpFormatter, add_device, add_threads, int_at_least, run_main

EXTENSIONS = (".png", ".jpg", ".jpeg")
OUTPUTS = ("_mask.png", "_panel.png", "_classes.npy", "_waves.gif", "_waves.png")  # <name> + each, per image
EXIF_ORIENTATION = 0x0112
SHEET_IMAGES = 16
SHEET_SIDE = 256  # pixels of a sheet image's longer side at most


class ImageError(ValueError):
    pass


def build_parser():
    p = ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("inputs", nargs="+", help="PNG or JPEG files, or folders of them")
    p.add_argument("--model", required=True,
                   help=f"a shipped model ({', '.join(pretrained.SHIPPED)}), a run directory (or any file in it), "
                        f"or a checkpoint in one")
    p.add_argument("--out", required=True, help="folder for the masks (created if missing)")
    p.add_argument("--resize", action="store_true",
                   help="let the model see images of another size scaled to the training images' size (bilinear) "
                        "instead of refusing them; the mask is scaled back to the image's size")
    p.add_argument("--invert", action="store_true",
                   help="use 1 - value: for dark objects on a light background (the models saw bright ones on black)")
    p.add_argument("--save-ids", action="store_true", help="also write <name>_classes.npy, the class id of every pixel")
    p.add_argument("--animate", action="store_true",
                   help="also write <name>_waves.gif, the hidden state over time, and <name>_waves.png, a strip of its "
                        "frames")
    p.add_argument("--channel", type=int_at_least(0), default=0, help="hidden channel that --animate shows")
    p.add_argument("--sheet", action="store_true",
                   help=f"also write sheet.png: the first {SHEET_IMAGES} images above their masks in one figure")
    add_device(p)
    add_threads(p)
    return p


def check_writable(out):
    """ValueError unless `out` is a folder, or can be created as one, that this process can write into."""
    existing = next(folder for folder in (out, *out.absolute().parents) if folder.exists() or folder.is_symlink())
    if not existing.is_dir():
        raise ValueError(f"--out {out}: {existing} is not a folder; name a folder for the masks")
    try:  # a real write: permissions, a read-only file system, a full inode table all show here
        os.rmdir(tempfile.mkdtemp(prefix=".predict-", dir=existing))
    except OSError as e:
        raise ValueError(f"--out {out}: cannot write in {existing} ({e.strerror}); name a folder you can "
                         f"write") from None


def image_paths(inputs):
    """(the image files named, folders expanded (sorted), each file once; the entries of those folders
    skipped because they are not regular files); ImageError naming every input that cannot be used."""
    paths, seen, skipped, problems = [], set(), [], []
    for name in inputs:
        path = Path(name)
        try:
            if path.is_dir():
                # hidden files are not the user's images (macOS's ._name.png metadata beside each copied file)
                entries = sorted(p for p in path.iterdir()
                                 if p.suffix.lower() in EXTENSIONS and not p.name.startswith("."))
                skipped += [p for p in entries if not p.is_file()]  # FIFOs would block the read, folders fail it
                found = [p for p in entries if p.is_file()]
                if not found:
                    problems.append(f"{path}: a folder without PNG or JPEG files")
            elif path.is_file():
                found = [path] if path.suffix.lower() in EXTENSIONS else []
                if not found:
                    problems.append(f"{path}: not a PNG or JPEG file (convert it to PNG first)")
            elif path.exists():
                problems.append(f"{path}: not a regular file (a FIFO, socket or device); name an image file")
                found = []
            else:
                problems.append(f"{path}: no such file or folder")
                found = []
        except OSError as e:  # a folder that cannot be listed
            problems.append(f"{path}: cannot be read ({e.strerror})")
            found = []
        for p in found:
            if os.path.realpath(p) not in seen:
                seen.add(os.path.realpath(p))
                paths.append(p)
    if problems:
        raise ImageError("; ".join(problems))
    return paths, skipped


def output_names(paths, out):
    """{path: the <name> of its outputs in `out`}: the file's stem, or stem-2, stem-3... when an earlier
    input has that name (compared ignoring case, as some file systems do) or an output would overwrite
    an input file, so that no output overwrites another or an input."""
    inputs = {os.path.realpath(p).casefold() for p in paths}
    stems = {p.stem.casefold() for p in paths}
    names, used = {}, set()
    for path in paths:
        name, n = path.stem, 1
        while (name.casefold() in used or (n > 1 and name.casefold() in stems)
               or any(os.path.realpath(out / f"{name}{suffix}").casefold() in inputs for suffix in OUTPUTS)):
            n += 1
            name = f"{path.stem}-{n}"
        used.add(name.casefold())
        names[path] = name
    return names


def to_model_input(path, channels, size, resize=False, invert=False):
    """The image at `path` as the model's input (channels x H x W, float32 in [0, 1], at the image's own
    size: see model_size) and the conversions made, in words; ImageError when it cannot be used."""
    try:
        image = Image.open(path)
        image.load()
        frames = getattr(image, "n_frames", 1)
        orientation = image.getexif().get(EXIF_ORIENTATION, 1)
        image = ImageOps.exif_transpose(image)  # photos are stored sideways with a tag that says so
    except Image.DecompressionBombError as e:
        raise ImageError(f"{path}: too large to decode safely ({e}); scale it down to the model's "
                         f"{size[1]}x{size[0]} pixels first") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # PIL raises all of these for broken files
        raise ImageError(f"{path}: cannot be read as an image ({e})") from None
    notes = []
    if frames > 1:
        notes.append(f"{frames} frames (animated or multi-page): only the first is used")
    if orientation != 1:
        notes.append("turned upright as its EXIF orientation says")
    if image.mode.startswith("I;16"):
        values = np.asarray(image, np.float32) / 65535  # 16-bit gray
    elif image.mode in ("I", "F"):
        raise ImageError(f"{path}: 32-bit ({image.mode}) images are not supported; save it as an 8- or 16-bit PNG")
    else:
        try:
            gray = image.mode in ("1", "L", "LA", "La")
            if "A" in image.mode or "transparency" in image.info:
                rgba = image.convert("RGBA")
                if rgba.getextrema()[3][0] < 255:  # transparent pixels become the training background, black
                    fill = (255, 255, 255, 255) if invert else (0, 0, 0, 255)  # as the model sees them: inverted
                    image = Image.alpha_composite(Image.new("RGBA", rgba.size, fill), rgba)
                    notes.append("transparency composited onto " + ("white (black once inverted)" if invert else
                                                                    "black"))
                else:
                    image = rgba
            image = image.convert("L" if gray else "RGB")
        except ValueError as e:  # a colour mode PIL cannot convert
            raise ImageError(f"{path}: its {image.mode} colours cannot be converted ({e}); save it as RGB") from None
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
        notes.append(f"seen by the model scaled from {x.shape[2]}x{x.shape[1]} to {size[1]}x{size[0]}")
    if invert:
        x = 1 - x
        notes.append("inverted")
    elif x.mean() > 0.5:
        notes.append("mostly bright: the models were trained on bright objects on black; if the objects here "
                     "are dark, pass --invert")
    return x.clamp(0, 1), notes


def model_size(x, size):
    """Image `x` (C x H x W) scaled to the model's `size` (bilinear, antialiased), or `x` when it has that size."""
    if tuple(x.shape[1:]) == tuple(size):
        return x
    return F.interpolate(x[None], size=tuple(size), mode="bilinear", align_corners=False, antialias=True)[0]


def class_ids(model, x, size, device):
    """The class id of every pixel of image `x` (H x W, at the image's size): the model sees `x` at
    `size`, and its logits are scaled back (bilinear) to the image's size before the argmax."""
    with torch.no_grad():
        logits = model(model_size(x, size)[None].to(device))
        if tuple(logits.shape[2:]) != tuple(x.shape[1:]):
            logits = F.interpolate(logits.float(), size=tuple(x.shape[1:]), mode="bilinear", align_corners=False)
    return logits.argmax(1)[0].cpu()


def thumbnail(x, mask, side=SHEET_SIDE):
    """Image (C x H x W) and mask (H x W) with their longer side at most `side` pixels, the mask as uint8:
    what a figure of many images shows, without holding every photo at its full size."""
    scale = side / max(x.shape[1:])
    if scale >= 1:
        return x, mask.to(torch.uint8)
    size = [max(1, round(n * scale)) for n in x.shape[1:]]
    small = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    return small, F.interpolate(mask[None, None].float(), size=size, mode="nearest")[0, 0].to(torch.uint8)


def sheet_name(paths, out):
    """sheet, or sheet-2, sheet-3... where <out>/sheet.png is one of the inputs."""
    inputs = {os.path.realpath(p).casefold() for p in paths}
    name, n = "sheet", 1
    while os.path.realpath(out / f"{name}.png").casefold() in inputs:
        n += 1
        name = f"sheet-{n}"
    return name


def coloured(mask, num_classes):
    """H x W class ids -> H x W x 3 uint8 in the project's class colours."""
    palette = (np.array(plotting.class_colours(num_classes)) * 255).round().astype(np.uint8)
    return palette[mask]


@contextlib.contextmanager
def staged(out, name):
    """A fresh folder inside `out` to write <name>* files into; on leaving, each replaces its namesake in `out`,
    so that an interruption or a full disk never leaves a half-written file in `out`, nor loses an older one."""
    staging = out / f".{name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    staging.mkdir()
    try:
        yield staging
        for path in sorted(staging.iterdir()):
            os.replace(path, out / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    out = Path(args.out)
    try:
        check_writable(out)
        paths, skipped = image_paths(args.inputs)
        device = settings.pick_device(args.device)
        model = pretrained.load(args.model, device)
    except ValueError as e:
        parser.error(str(e))
    settings.set_threads(args.threads)
    config, class_names = model.config, model.class_names
    channels, image_size = config["in_channels"], model.image_size
    if args.animate and not model.recurrent:
        parser.error(f"--animate: a {config['model']} has no hidden state over time; use an nwm or lstm model")
    if args.animate and args.channel >= config["hidden_channels"]:
        parser.error(f"--channel {args.channel}: the model has {config['hidden_channels']} hidden channels")
    for path in skipped:
        print(f"skipped {path}: not a regular file (a FIFO, socket, device or folder)", file=sys.stderr)
    problems = []
    for path in paths:  # every image checked before anything is written
        try:
            to_model_input(path, channels, image_size, args.resize, args.invert)
        except ImageError as e:
            problems.append(str(e))
    if problems:
        parser.error(f"{len(problems)} of {len(paths)} images cannot be used: " + "; ".join(problems))

    names = output_names(paths, out)
    sheet = []  # (image, mask, file name) of the first SHEET_IMAGES images, for --sheet
    try:
        out.mkdir(parents=True, exist_ok=True)
        for path in paths:  # read again, so that one image at a time is held at its full size
            try:
                x, notes = to_model_input(path, channels, image_size, args.resize, args.invert)
            except ImageError as e:
                sys.exit(f"predict.py: error: {e} (it changed while predict.py ran); the images listed above have "
                         f"all their outputs, the others none")
            name = names[path]
            if name != path.stem:
                notes.append(f"written as {name}: another input or its outputs have the name {path.stem}")
            mask = class_ids(model, x, image_size, device)
            with staged(out, name) as folder:
                Image.fromarray(coloured(mask.numpy(), len(class_names))).save(folder / f"{name}_mask.png")
                fig = plotting.prediction_panel(x, mask, class_names, path.name)
                plotting.save_figure(fig, f"{name}_panel", folder)
                if args.save_ids:
                    np.save(folder / f"{name}_classes.npy", mask.numpy().astype(np.uint8))
                if args.animate:
                    write_animation(model.cpu(), model_size(x, image_size), len(class_names), folder,
                                    f"{name}_waves", f"{path.name}: hidden channel {args.channel}",
                                    channel=args.channel)
                    model.to(device)
            if args.sheet and len(sheet) < SHEET_IMAGES:
                sheet.append((*thumbnail(x, mask), path.name))
            counts = torch.bincount(mask.flatten(), minlength=len(class_names))
            found = ", ".join(f"{class_names[c]} {int(n)} px" for c, n in enumerate(counts) if c and n)
            print(f"{path} -> {out / f'{name}_mask.png'}: {found or 'background only'}"
                  + (f" ({'; '.join(notes)})" if notes else ""))
        if sheet:
            name = sheet_name(paths, out)
            with staged(out, name) as folder:
                images, masks, titles = zip(*sheet)
                plotting.save_figure(plotting.sample_grid(images, masks, class_names, len(sheet), min(len(sheet), 8),
                                                          titles), name, folder)
            print(f"the first {len(sheet)} images and their masks -> {out / f'{name}.png'}")
    except BrokenPipeError:  # stdout's reader went away (| head), not the disk: run_main ends quietly
        raise
    except OSError as e:  # a disk that fills up, or a folder made read-only, after the check
        sys.exit(f"predict.py: error: cannot write in {out} ({e}); the images listed above have all their "
                 f"outputs, the others none")


if __name__ == "__main__":
    try:
        run_main(main)
    except KeyboardInterrupt:
        sys.exit(130)
