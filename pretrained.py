"""Trained models in one line: the ones shipped in results/runs by name, or any run.

    import pretrained
    model = pretrained.load("polygons/nwm")                       # a shipped model, eval mode
    model = pretrained.load("runs/tetrominoes/nwm-linear-T100-h2-seed0")   # a run directory, or a file in it
    model = pretrained.load("runs/.../checkpoint.pt")             # a checkpoint inside its run directory
    model.class_names, model.config                               # what its outputs mean, how it was trained

Files that do not make a model (a checkpoint overwritten, one of another run) raise runs.DamagedFile,
naming the file.

(torch.hub.load works too, see hubconf.py.) The shipped models are seed-0 runs of the paper's
recipe, trained for fewer than its 300 epochs (on our CPUs, the Polygons NWM on a GPU;
docs/results.md): on the paper's Tetrominoes arrays the NWM, the ConvLSTM and a CNN of depth 2
(the CNNs of depth 8 and 16 collapsed to predicting background, so the shipped CNN is the
shallow one that learned), on the paper's MNIST splits the NWM (20 epochs, stage 1 of its
experiment), on the paper's Multi-MNIST arrays the U-Net of width 4 (the U-Net the
paper's wave model rivals), and an NWM on today's Polygons recipe. What each was trained on, for
how many epochs, and its test score (the float32 re-evaluation of results/scores.csv) are read
from its run directory and that table:

    python pretrained.py                                           # or pretrained.describe(name)
"""
import csv
from pathlib import Path

import torch

import runs
import settings
from cli import run_main
from dataset_config import DATASETS, get_info

REPO = Path(__file__).resolve().parent
# name -> run directory under the repository
SHIPPED = {
    "tetrominoes/nwm": "results/runs/tetrominoes/nwm-linear-T100-h2-seed0",
    "tetrominoes/lstm": "results/runs/tetrominoes/lstm-linear-T20-h2-seed0",
    "tetrominoes/cnn": "results/runs/tetrominoes/cnn-depth2-seed0",
    "mnist/nwm": "results/runs/mnist/nwm-linear-T100-h2-seed0",
    "multi_mnist/unet": "results/runs/multi_mnist/unet-width4-seed0",
    "polygons/nwm": "results/runs/polygons/nwm-linear-T100-h16-seed0",
}
SCORES = REPO / "results" / "scores.csv"  # the shipped runs re-evaluated in float32 (produce_scores.py)


def resolve(source):
    """(run directory, checkpoint file name) of a shipped name, a run directory, a checkpoint (a .pt file) in
    a run directory, or any other file in one (it names its run: config.json, metrics.csv, ...)."""
    if source in SHIPPED:
        run_dir = REPO / SHIPPED[source]
        if not ((run_dir / runs.CONFIG).is_file() and (run_dir / runs.CHECKPOINT).is_file()):
            raise ValueError(f"shipped model {source}: {run_dir} has no {runs.CONFIG} and {runs.CHECKPOINT}; "
                             f"this copy of the repository lacks the shipped runs (git checkout results/runs)")
        return run_dir, runs.CHECKPOINT
    path = Path(source)
    run_dir = path.parent if path.is_file() else path
    if path.is_file() and path.suffix == ".pt" and (run_dir / runs.CONFIG).is_file():
        return run_dir, path.name
    if (run_dir / runs.CONFIG).is_file() and (run_dir / runs.CHECKPOINT).is_file():
        return run_dir, runs.CHECKPOINT
    if (run_dir / runs.CONFIG).is_file():
        raise ValueError(f"{run_dir} is a run directory without {runs.CHECKPOINT} (it has not finished an epoch); "
                         f"resume its training, or pass a checkpoint in it")
    if path.is_file():
        raise ValueError(f"{source}: a checkpoint is read with the config.json of its run directory, and "
                         f"{path.parent} has none; pass the checkpoint inside its run directory")
    raise ValueError(f"{source} is not a shipped model ({', '.join(SHIPPED)}), nor a run directory with "
                     f"{runs.CONFIG} and {runs.CHECKPOINT}, nor a file in one")


def float32_scores(run_name):
    """The row of results/scores.csv of a run re-evaluated in float32 (produce_scores.py), or None."""
    if not SCORES.is_file():
        return None
    with open(SCORES, newline="") as f:
        return next((row for row in csv.DictReader(f) if row["run"] == run_name and row["evaluated"] == "re-evaluated"),
                    None)


def describe(name):
    """One line on shipped model `name`, read from its run directory: its model and variant, the data it was
    trained on (runs.data_label), its epochs and its test scores: the float32 re-evaluation of
    results/scores.csv, the one the docs quote, else the scores its run stored at its end (in its training's
    precision)."""
    run_dir, _ = resolve(name)
    config, test = runs.load_json(run_dir / runs.CONFIG), runs.load_json(run_dir / runs.TEST_METRICS)
    scores, source = float32_scores(config["run_name"]), "float32, results/scores.csv"
    if scores is None:
        scores, source = test, f"as its run tested it, {runs.TEST_METRICS}"
    return (f"{name}: {config['model']} {runs.variant(config)} on {config['dataset']} "
            f"(data: {runs.data_label(config)}), {test['epochs_run']} epochs (best {test['best_epoch']}), "
            f"test fg IoU {float(scores['iou_foreground']):.4f}, acc {float(scores['acc']):.4f} ({source}); "
            f"{SHIPPED[name]}")


def load(source, device="cpu"):
    """The model of `source` (see resolve) in eval mode, with `class_names`, `image_size` and `config` attached;
    ValueError (runs.DamagedFile for files that do not make a model) with the file named."""
    device = settings.pick_device(str(device))  # a device this PyTorch lacks is not a damaged checkpoint
    run_dir, checkpoint = resolve(source)
    try:
        model, config = runs.load_model(run_dir, device, which=checkpoint)
    except (runs.DamagedFile, torch.cuda.OutOfMemoryError):
        raise
    except (KeyError, IndexError, TypeError, AttributeError, RuntimeError, ValueError, OSError) as e:
        # a file overwritten with other data or unreadable, a checkpoint of another run, a config.json edited by hand
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]
        raise runs.DamagedFile(f"{run_dir / checkpoint} with {run_dir / runs.CONFIG} does not make a model ("
                               f"{reason}): one of them is damaged, or they are from different runs") from None
    if "class_names" in config and "image_size" in config:  # recorded by train.py: any dataset, wherever it is
        model.class_names, model.image_size = tuple(config["class_names"]), tuple(config["image_size"])
    elif isinstance(config.get("dataset"), str) and config["dataset"] in DATASETS:  # runs from before they were
        info = get_info(config["dataset"])
        model.class_names, model.image_size = info.class_names, info.image_size
    else:
        raise runs.DamagedFile(f"{run_dir / runs.CONFIG}: trained on dataset {config.get('dataset')!r}, which "
                               f"this project does not know ({', '.join(DATASETS)})")
    model.config = config
    return model


def main():
    for shipped in SHIPPED:
        print(describe(shipped))


if __name__ == "__main__":
    run_main(main)
