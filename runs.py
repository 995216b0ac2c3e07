"""Run directories: what a training run writes, and how to read it back.

    <runs root>/<run name>/
        config.json        every resolved setting, num_params, library versions, device
        metrics.csv        one row per finished epoch: train and val metrics, lr, seconds
        checkpoint.pt      the model with the best validation loss so far
        last.pt            everything needed to resume after the last finished epoch
        test_metrics.json  the best checkpoint's metrics on the test split; its presence
                           marks the run as finished

Files are written to a temporary name and renamed into place, so a run killed at any
moment leaves each file either complete or as it was.
"""
import json
import os
from pathlib import Path

import torch

RUNS_ROOT_ENV = "WAVES_RUNS_ROOT"
DEFAULT_RUNS_ROOT = Path("runs")

CONFIG, METRICS, CHECKPOINT, LAST, TEST_METRICS = (
    "config.json", "metrics.csv", "checkpoint.pt", "last.pt", "test_metrics.json")


def resolve_runs_root(runs_root=None):
    """The runs root: the argument if given, else $WAVES_RUNS_ROOT, else ./runs."""
    if runs_root is not None:
        return Path(runs_root)
    return Path(os.environ.get(RUNS_ROOT_ENV) or DEFAULT_RUNS_ROOT)


def _replace_atomically(path, write):
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save_torch(obj, path):
    _replace_atomically(path, lambda tmp: torch.save(obj, tmp))


def save_text(text, path):
    _replace_atomically(path, lambda tmp: Path(tmp).write_text(text))


def save_json(obj, path):
    # allow_nan: metrics of an empty class are NaN; Python's json reads them back
    save_text(json.dumps(obj, indent=2, allow_nan=True) + "\n", path)


def load_json(path):
    return json.loads(Path(path).read_text())


def is_finished(run_dir):
    return (Path(run_dir) / TEST_METRICS).is_file()


def find_runs(root):
    """Every run directory (one holding a config.json) under `root`, sorted."""
    return sorted(p.parent for p in Path(root).rglob(CONFIG))


def load_model(run_dir, device="cpu", which=CHECKPOINT):
    """(model, config) of a run, with the weights of its best checkpoint, in eval mode."""
    from models import build_model, model_config_keys  # keeps `import runs` light

    run_dir = Path(run_dir)
    config = load_json(run_dir / CONFIG)
    state = torch.load(run_dir / which, map_location=device, weights_only=True)
    keys = model_config_keys(config["model"])
    model = build_model(config["model"], **{k: config[k] for k in keys if k in config})
    model.load_state_dict(state["model"])
    return model.to(device).eval(), config
