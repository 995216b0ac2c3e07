"""Shared fixtures: a tiny 16x16 dataset registered like the real ones, a fast training run on
it (FAST, run_train), a small Tetrominoes made by its data script (small_tetrominoes), a train.py
process's command (train_command), metrics.csv without what depends on the machine
(metrics_rows), a tiny model and batch."""
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import dataset_config
import runs
import settings
from data_scripts import common
from models import build_model

REPO = Path(__file__).resolve().parents[1]

# train.py flags of a fast CPU run: a small model, float32 throughout (--amp off), so that stored and
# re-computed metrics can be compared exactly on any CPU, and no floor on early stopping. What a test
# varies (epochs, run name, sizes, --no-progress for a subprocess) it adds after these.
FAST = ["--device", "cpu", "--T", "8", "--readout-width", "16", "--c-mid", "8", "--min-epochs", "0", "--amp", "off",
        "--batch-size", "16"]
# the split sizes of the small datasets the data scripts make for the tests (small_tetrominoes)
SMALL_SPLITS = ["--train", "20", "--val", "5", "--test", "5"]
# the columns of metrics.csv that say what machine an epoch ran on (runs.hardware) and how long it took
MACHINE_COLUMNS = ("seconds", "val_seconds", *runs.hardware("cpu", amp=False))


def metrics_rows(run_dir):
    """The rows of a run's metrics.csv (strings) without MACHINE_COLUMNS: what the same computation gives
    on any machine, however it was sliced."""
    return [{k: v for k, v in row.items() if k not in MACHINE_COLUMNS} for row in runs.load_metrics(run_dir)]


def train_command(data_root, runs_root, *extra):
    """The command of a train.py process (run it with cwd=REPO) on the Tetrominoes under `data_root` with
    FAST's flags: run "r" under `runs_root` for up to 500 epochs (the test stops it, or gives --epochs), then
    `extra` (a flag given again there wins)."""
    return [sys.executable, "train.py", "--dataset", "tetrominoes", "--data-root", str(data_root),
            "--runs-root", str(runs_root), "--run-name", "r", "--epochs", "500", *FAST, *extra]


def make_squares(n, rng, size=16):
    """RGB images with one grey square each; the class is set by its side (3 -> 1, 6 -> 2),
    so a pixel's class depends on the whole square, as in the paper's tasks."""
    images = np.zeros((n, size, size, 3), np.uint8)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        label = rng.integers(1, 3)
        side = 3 if label == 1 else 6
        r, c = rng.integers(0, size - side, 2)
        images[i, r:r + side, c:c + side] = rng.integers(120, 256)
        masks[i, r:r + side, c:c + side] = label
    return images, masks


def tiny_model(name="nwm"):
    """Model `name` for the tiny dataset's images, small and seeded."""
    torch.manual_seed(0)
    return build_model(name, in_channels=3, num_classes=3, T=6, c_mid=4, readout_width=8, depth=2, width=2)


def tiny_batch():
    """Four random 16x16 RGB images and masks of three classes, the same each call."""
    generator = torch.Generator().manual_seed(1)
    return torch.rand(4, 3, 16, 16, generator=generator), torch.randint(0, 3, (4, 16, 16), generator=generator)


@pytest.fixture
def tiny_dataset(tmp_path, monkeypatch):
    """Registers dataset "tiny" (16x16 RGB, 3 classes, 48/16/16 images) under tmp_path/data,
    written as the data scripts write a dataset (with its dataset.json)."""
    info = dataset_config.DatasetInfo(
        name="tiny", folder="tiny", image_size=(16, 16), channels=3, num_classes=3,
        class_names=("background", "small", "large"), paper_split_sizes=(48, 16, 16),
        create_command="(written by the test fixture)", description="test squares", default_seed=0)
    monkeypatch.setitem(dataset_config.DATASETS, "tiny", info)
    monkeypatch.setattr(dataset_config, "BUILT_IN", (*dataset_config.BUILT_IN, "tiny"))  # a generator's, not imported
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    arrays, sizes = {}, dict(zip(info.splits, info.paper_split_sizes))
    for split, n in sizes.items():
        arrays[f"{split}_images"], arrays[f"{split}_masks"] = make_squares(n, rng)
    request = common.describe(info, 0, sizes, [f"{name}.npy" for name in arrays], {"squares": "make_squares"})
    common.write_dataset(root / "tiny", arrays, request)
    return root


@pytest.fixture(scope="session")
def small_tetrominoes(tmp_path_factory):
    """A data root holding Tetrominoes of SMALL_SPLITS's sizes, made once by its data script and shared by
    every test: read it, never change it (writable_tetrominoes is a test's own copy)."""
    from data_scripts import create_tetrominoes
    root = tmp_path_factory.mktemp("small_tetrominoes")
    create_tetrominoes.main(["--data-root", str(root), *SMALL_SPLITS, "--no-progress"])
    return root


@pytest.fixture
def writable_tetrominoes(small_tetrominoes, tmp_path):
    """A copy of small_tetrominoes at tmp_path/data, for a test that changes the data."""
    return shutil.copytree(small_tetrominoes, tmp_path / "data")


@pytest.fixture
def run_train(tiny_dataset):
    """run_train(runs_root, *extra): train.py on the tiny dataset with FAST's flags, no progress bars,
    then `extra`; returns what train.main returns (the test metrics, None when paused)."""
    import train  # here, not at the top: only the tests that train need it

    def run(runs_root, *extra):
        return train.main(["--dataset", "tiny", "--data-root", str(tiny_dataset), "--runs-root", str(runs_root),
                           "--no-progress", *FAST, *extra])
    return run


@pytest.fixture(autouse=True)
def cpu_tests_name_their_device(request, monkeypatch):
    """Outside tests/test_cuda.py a tool asked for device "auto" fails the test: on a machine
    with a GPU it would run there, so every CPU test passes --device cpu."""
    if request.path.name == "test_cuda.py":
        return
    pick_device = settings.pick_device

    def refuse_auto(name="auto"):
        assert name != "auto", "a CPU test must pass --device cpu (auto picks a GPU where there is one)"
        return pick_device(name)

    monkeypatch.setattr(settings, "pick_device", refuse_auto)
