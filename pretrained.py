"""Trained models in one line: the ones shipped in results/runs by name, or any run.

    import pretrained
    model = pretrained.load("polygons/nwm")                       # a shipped model, eval mode
    model = pretrained.load("runs/tetrominoes/nwm-linear-T100-h2-seed0")   # a run directory
    model = pretrained.load("runs/.../checkpoint.pt")             # a checkpoint inside its run directory
    model.class_names, model.config                               # what its outputs mean, how it was trained

(torch.hub.load works too, see hubconf.py.) The shipped Tetrominoes models were trained on
the paper's Tetrominoes arrays with the paper's recipe, seed 0, on a CPU (docs/results.md):
the NWM and the ConvLSTM for 100 of the paper's 300 epochs, test fg IoU 0.986 and 0.728, the
CNN of depth 2 for 30, 0.146 (the CNNs of depth 8 and 16 collapsed to predicting background,
fg IoU 0.000, so the shipped CNN is the shallow one that learned). The Polygons NWM was trained on
today's Polygons recipe, for 8 epochs.
"""
from pathlib import Path

import runs
from dataset_config import get_info

REPO = Path(__file__).resolve().parent
# name -> run directory under the repository
SHIPPED = {
    "tetrominoes/nwm": "results/runs/tetrominoes/nwm-linear-T100-h2-seed0",
    "tetrominoes/lstm": "results/runs/tetrominoes/lstm-linear-T20-h2-seed0",
    "tetrominoes/cnn": "results/runs/tetrominoes/cnn-depth2-seed0",
    "polygons/nwm": "results/runs/polygons/nwm-linear-T100-h16-seed0",
}


def resolve(source):
    """(run directory, checkpoint file name) of a shipped name, a run directory or a checkpoint file."""
    if source in SHIPPED:
        return REPO / SHIPPED[source], runs.CHECKPOINT
    path = Path(source)
    if path.is_file() and (path.parent / runs.CONFIG).is_file():
        return path.parent, path.name
    if (path / runs.CONFIG).is_file() and (path / runs.CHECKPOINT).is_file():
        return path, runs.CHECKPOINT
    if path.is_file():
        raise ValueError(f"{source}: a checkpoint is read with the config.json of its run directory, and "
                         f"{path.parent} has none; pass the checkpoint inside its run directory")
    raise ValueError(f"{source} is not a shipped model ({', '.join(SHIPPED)}), nor a run directory with "
                     f"{runs.CONFIG} and {runs.CHECKPOINT}, nor a checkpoint file")


def load(source, device="cpu"):
    """The model of `source` (see resolve) in eval mode, with `class_names` and `config` attached."""
    run_dir, checkpoint = resolve(source)
    model, config = runs.load_model(run_dir, device, which=checkpoint)
    model.class_names = get_info(config["dataset"]).class_names
    model.config = config
    return model
