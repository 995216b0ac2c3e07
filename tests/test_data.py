"""Tests of the datasets: dataset_config.py (table, loader, errors) and data_scripts/ (recipes,
determinism, all-or-nothing writing, MNIST's IDX/checksum path on fake files)."""

import gzip
import hashlib
import json
import os
import shlex
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

import dataset_config as dc
import plotting
import settings
from conftest import REPO as ROOT, SMALL_SPLITS as TINY, make_squares
from data_scripts import common, create_multi_mnist, create_polygons, create_tetrominoes, download_mnist
from data_scripts import import_folder, mnist_files, show_samples, verify_datasets

# The four standard MNIST files, for machines without internet. Only the tests look here:
# users pass their own folder with --from-dir.
SHARED_MNIST = ROOT.parent / "shared" / "mnist"


def create(module, root, *extra):
    return module.main(["--data-root", str(root), *TINY, *extra])


def npy_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(Path(folder).glob("*.npy"))}


def write_idx(path, array, compress=True):
    """An IDX file: magic 0x08nn (unsigned bytes, nn dimensions), the dimensions, the bytes;
    gzip'd when `compress`, as the mirrors serve it, else as other sources ship it."""
    array = np.asarray(array, np.uint8)
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(header + array.tobytes())


def write_fake_mnist(folder, train_digits, train_labels, test_digits, test_labels, compress=True):
    """The four MNIST files with these contents; returns their checksum table (MD5 of the content)."""
    folder.mkdir(parents=True, exist_ok=True)
    parts = {"train-images-idx3-ubyte": train_digits, "train-labels-idx1-ubyte": train_labels,
             "t10k-images-idx3-ubyte": test_digits, "t10k-labels-idx1-ubyte": test_labels}
    for name, array in parts.items():
        write_idx(folder / (f"{name}.gz" if compress else name), array, compress)
    return {name: mnist_files.content_md5(mnist_files.find_file(folder, name)) for name in parts}


def write_metadata(folder, name):
    """A dataset.json of the current format, for folders whose arrays a test writes by hand."""
    (folder / "dataset.json").write_text(json.dumps({"format_version": dc.FORMAT_VERSION, "dataset": name}))


@pytest.fixture(scope="module")
def polygon_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("poly")
    create(create_polygons, root)
    return root

# -----------------------------------------------------------------------------
# the table and the data root


def test_resolve_data_root(monkeypatch):
    monkeypatch.delenv(settings.DATA_ROOT_ENV, raising=False)
    assert settings.data_root() == Path("data")
    monkeypatch.setenv(settings.DATA_ROOT_ENV, "/somewhere")
    assert settings.data_root() == Path("/somewhere")
    assert settings.data_root("/given") == Path("/given")


def test_dataset_table_matches_spec():
    expected = {"tetrominoes": ((64, 64), 3, 6, (10_000, 1_000, 1_000)),
                "mnist": ((56, 56), 1, 11, (51_000, 9_000, 10_000)),
                "multi_mnist": ((128, 128), 1, 11, (10_000, 1_000, 1_000)),
                "polygons": ((64, 64), 1, 7, (10_000, 1_000, 1_000))}
    assert set(dc.BUILT_IN) == set(expected)
    for name, (size, channels, classes, splits) in expected.items():
        info = dc.get_info(name)
        assert (info.image_size, info.channels, info.num_classes, info.paper_split_sizes) == (size, channels,
                                                                                               classes, splits)
        assert len(info.class_names) == classes and info.class_names[0] == "background"
        assert info.splits == ("train", "val", "test") and info.create_command.startswith("python data_scripts/")
        assert (ROOT / info.create_command.split()[1]).is_file()
    assert dc.get_info("tetrominoes").class_names == ("background", "I", "O", "T", "S/Z", "J/L")
    assert dc.get_info("polygons").class_names[1] == "triangle" and dc.get_info("polygons").class_names[6] == "octagon"

# -----------------------------------------------------------------------------
# determinism, splits, writing


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path, small_tetrominoes):
    create(create_tetrominoes, tmp_path / "a")
    assert npy_bytes(tmp_path / "a" / "tetrominoes") == npy_bytes(small_tetrominoes / "tetrominoes")
    assert ((tmp_path / "a" / "tetrominoes" / "dataset.json").read_bytes()
            == (small_tetrominoes / "tetrominoes" / "dataset.json").read_bytes())
    create(create_tetrominoes, tmp_path / "b", "--seed", "1")
    other = npy_bytes(tmp_path / "b" / "tetrominoes")
    assert all(other[name] != data for name, data in npy_bytes(small_tetrominoes / "tetrominoes").items())


def test_split_streams_are_independent(tmp_path, polygon_root):
    # a bigger test split must not change train (each split has its own random stream)
    create_polygons.main(["--data-root", str(tmp_path), "--train", "20", "--val", "5", "--test", "9"])
    ours, reference = npy_bytes(tmp_path / "polygons"), npy_bytes(polygon_root / "polygons")
    assert ours["train_images.npy"] == reference["train_images.npy"]
    assert ours["val_masks.npy"] == reference["val_masks.npy"]


def test_no_polygons_test_image_repeats_train_or_val(polygon_root):
    # our own recipe redraws such images (the paper's generators draw on regardless)
    digests = {s: {common.image_digest(i) for i in np.load(polygon_root / "polygons" / f"{s}_images.npy")}
               for s in dc.SPLITS}
    assert not digests["test"] & (digests["train"] | digests["val"])
    assert not digests["val"] & digests["train"]


def test_colliding_samples_are_redrawn():
    # a sampler with only 6 possible images: val and test must avoid train's (and test val's)
    def make_sample(rng):
        k = int(rng.integers(6))
        return np.full((2, 2), k, np.uint8), np.zeros((2, 2), np.uint8), k

    arrays, _, redrawn = common.generate_splits(make_sample, {"train": 3, "val": 1, "test": 1}, 0, "toy")
    train = set(arrays["train_images"][:, 0, 0])
    assert arrays["val_images"][0, 0, 0] not in train
    assert arrays["test_images"][0, 0, 0] not in train | {arrays["val_images"][0, 0, 0]}
    again = common.generate_splits(make_sample, {"train": 3, "val": 1, "test": 1}, 0, "toy")
    assert all(np.array_equal(arrays[k], again[0][k]) for k in arrays) and again[2] == redrawn


def test_dataset_json(small_tetrominoes):
    folder = small_tetrominoes / "tetrominoes"
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["format_version"] == dc.FORMAT_VERSION and meta["dataset"] == "tetrominoes"
    assert meta["seed"] == 42 and meta["split_sizes"] == {"train": 20, "val": 5, "test": 5}
    assert meta["image_size"] == [64, 64] and meta["class_names"][1] == "I"
    assert "wraparound" in meta["recipe"]["ring"]
    # the SHA-256 of every array written; other sizes than the paper's: not the paper's arrays
    assert sorted(meta["sha256"]) == sorted(f[:-4] for f in meta["files"])
    for name, digest in meta["sha256"].items():
        assert hashlib.sha256(np.load(folder / f"{name}.npy").tobytes()).hexdigest() == digest
    assert meta["paper_identical"] is False
    assert sum(meta["stats"]["images_with_1_to_5_pieces"]["train"]) == 20
    assert dc.fingerprint(meta)["sha256"] != dc.fingerprint({**meta, "sha256": {**meta["sha256"], "val_masks": "0"}})["sha256"]


def test_rerun_does_nothing_other_recipe_needs_force(tmp_path, capsys):
    out = create(create_polygons, tmp_path)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()
    create(create_polygons, tmp_path)
    assert "nothing to do" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    with pytest.raises(dc.DatasetError, match="different recipe.*seed.*--force"):
        create(create_polygons, tmp_path, "--seed", "3")
    old = npy_bytes(out)
    create(create_polygons, tmp_path, "--seed", "3", "--force")
    assert npy_bytes(out)["train_images.npy"] != old["train_images.npy"]
    assert json.loads((out / "dataset.json").read_text())["seed"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["polygons"]  # no temporary folders left


def test_crash_leaves_no_half_dataset(tmp_path, monkeypatch):
    real_save, calls = np.save, []

    def failing_save(path, array):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        real_save(path, array)

    monkeypatch.setattr(np, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        create(create_tetrominoes, tmp_path)
    assert list(tmp_path.iterdir()) == []  # neither the dataset nor its temporary folder
    monkeypatch.setattr(np, "save", real_save)
    out = create(create_tetrominoes, tmp_path)
    old = npy_bytes(out)
    calls.clear()
    monkeypatch.setattr(np, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        create(create_tetrominoes, tmp_path, "--seed", "5", "--force")
    assert npy_bytes(out) == old and [p.name for p in tmp_path.iterdir()] == ["tetrominoes"]


def test_temporary_folder_is_not_a_dataset(tmp_path):
    half = tmp_path / ".tetrominoes.tmp-1234"
    half.mkdir()
    np.save(half / "train_images.npy", np.zeros((2, 64, 64, 3), np.uint8))
    np.save(half / "train_masks.npy", np.zeros((2, 64, 64), np.uint8))
    with pytest.raises(dc.DatasetNotFoundError):
        dc.load_dataset("tetrominoes", "train", tmp_path)
    out = create(create_tetrominoes, tmp_path)
    assert dc.load_dataset("tetrominoes", "train", tmp_path)[0].shape == (20, 3, 64, 64) and out.is_dir()


def no_work(*args, **kwargs):
    raise AssertionError("the work started before the output folder was checked")


@pytest.mark.parametrize("module", [create_tetrominoes, create_polygons, create_multi_mnist, download_mnist])
def test_a_data_root_that_cannot_hold_a_dataset_is_refused_before_work(tmp_path, module, monkeypatch, fake_mnist):
    monkeypatch.setattr(common, "progress", no_work)
    monkeypatch.setattr(mnist_files, "fetch_raw", no_work)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    for argv in (["--data-root", str(a_file)], ["--data-root", str(a_file / "deeper")]):
        with pytest.raises(dc.DatasetError, match="is a file, not a folder|raw MNIST files are missing"):
            module.main([*argv, "--from-dir", str(fake_mnist[0])] if module is download_mnist else argv)
    assert a_file.read_text() == "mine"
    if module is not create_multi_mnist:  # it needs the raw files first, and says so
        monkeypatch.setattr(common.os, "access", lambda path, mode: False)  # as root, chmod cannot deny writing
        with pytest.raises(dc.DatasetError, match=f"cannot write in {tmp_path}.*read-only"):
            module.main(["--data-root", str(tmp_path)])
        with pytest.raises(dc.DatasetError, match="is a file, not a folder"):
            module.main(["--out", str(a_file)])


@pytest.mark.slow
def test_the_command_the_loader_suggests_for_a_file_refuses_in_one_line(tmp_path):
    a_file = tmp_path / "data"
    a_file.write_text("")
    with pytest.raises(dc.DatasetNotFoundError) as e:
        dc.load_dataset("tetrominoes", "train", a_file)
    suggested = str(e.value).splitlines()[-1].split()
    run = subprocess.run([sys.executable, *suggested[1:]], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.strip() == f"error: {a_file} is a file, not a folder, so no dataset can be written to " \
                                 f"{a_file / 'tetrominoes'}; pick another --data-root (or --out)"


def test_the_suggested_command_keeps_a_data_root_with_a_space_whole(tmp_path):
    root = tmp_path / "my data"
    with pytest.raises(dc.DatasetNotFoundError) as e:
        dc.load_dataset("tetrominoes", "train", root)
    suggested = shlex.split(str(e.value).splitlines()[-1])  # pasted into a shell
    assert suggested[suggested.index("--data-root") + 1] == str(root)


def test_a_file_system_error_or_ctrl_c_during_the_work_ends_in_one_line(tmp_path, monkeypatch, capsys):
    def disk_full(path, array):
        raise OSError(28, "No space left on device", str(path))

    def ctrl_c(path, array):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "save", disk_full)
    with pytest.raises(SystemExit) as e:
        common.run_cli(lambda: create(create_tetrominoes, tmp_path))
    assert "No space left on device (no dataset was changed" in str(e.value)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(np, "save", ctrl_c)
    with pytest.raises(SystemExit) as e:
        common.run_cli(lambda: create(create_polygons, tmp_path))
    assert e.value.code == 130 and "interrupted: no dataset was changed" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# A creation stopped at a chosen moment: np.save (writing the temporary folder) or the n-th os.rename
# (the swap into place) kills the process from inside, so the moment is exact; "hold" makes it wait
# while writing until the file <ready>.go exists, "announce" says when it starts to write.
KILLER = """
import os, signal, sys, time
import numpy as np
sys.path.insert(0, {root!r})
from data_scripts import common, create_tetrominoes
moment, ready, count = sys.argv[1], sys.argv[2], [0]
def hook(real, n):
    def call(*args, **kwargs):
        count[0] += 1
        if count[0] == n and moment == "hold":
            open(ready, "w").close()
            while not os.path.exists(ready + ".go"):
                time.sleep(0.05)
        elif count[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    return call
def announce(real):
    def call(*args, **kwargs):
        open(ready, "w").close()
        return real(*args, **kwargs)
    return call
if moment == "swap":
    os.rename = hook(os.rename, 2)
elif moment == "announce":
    common.write_dataset = announce(common.write_dataset)
else:
    np.save = hook(np.save, 2)
create_tetrominoes.main(sys.argv[3:])
"""


def stopped_creation(root, moment, *extra, ready=None):
    """Runs create_tetrominoes into `root`, stopped at `moment` (see KILLER); returns the process."""
    return subprocess.Popen([sys.executable, "-c", KILLER.format(root=str(ROOT)), moment, str(ready),
                             "--data-root", str(root), *TINY, "--no-progress", *extra], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path, process):
    for _ in range(600):
        if path.exists() or process.poll() is not None:
            break
        time.sleep(0.1)
    assert path.exists(), process.communicate()


@pytest.mark.slow
def test_a_killed_creation_leaves_nothing_behind_once_the_next_one_or_the_loader_runs(tmp_path):
    assert stopped_creation(tmp_path, "save").wait() == -9
    stale, = tmp_path.glob(".tetrominoes.tmp-*")  # the fault: a half-written copy
    create(create_tetrominoes, tmp_path)
    assert not stale.exists() and [p.name for p in tmp_path.iterdir()] == ["tetrominoes"]
    assert stopped_creation(tmp_path, "save", "--seed", "5", "--force").wait() == -9
    assert len(list(tmp_path.glob(".tetrominoes.tmp-*"))) == 1
    assert dc.load_dataset("tetrominoes", "test", tmp_path)[0].shape == (5, 3, 64, 64)
    assert [p.name for p in tmp_path.iterdir()] == ["tetrominoes"]


@pytest.mark.slow
def test_a_creation_killed_during_the_swap_is_finished_by_the_loader(tmp_path):
    old = npy_bytes(create(create_tetrominoes, tmp_path))
    assert stopped_creation(tmp_path, "swap", "--seed", "5", "--force").wait() == -9
    assert not (tmp_path / "tetrominoes").exists()  # the fault: the dataset moved aside, the new one not yet in place
    meta = dc.read_metadata("tetrominoes", tmp_path)
    assert meta["seed"] == 5 and npy_bytes(tmp_path / "tetrominoes") != old
    assert [p.name for p in tmp_path.iterdir()] == ["tetrominoes"]
    dc.check_arrays("tetrominoes", tmp_path)


def test_a_swap_killed_after_moving_mnists_raw_files_keeps_them(tmp_path):
    old, new = tmp_path / ".mnist.old-abc", tmp_path / ".mnist.tmp-abc"
    (old / "raw").mkdir(parents=True)
    (old / "raw" / "train-images-idx3-ubyte.gz").write_bytes(b"digits")
    (old / "train_images.npy").write_bytes(b"old")
    new.mkdir()
    (new / "train_images.npy").write_bytes(b"new")
    (new / "dataset.json").write_text("{}")
    dc.finish_interrupted_writes(tmp_path / "mnist")
    assert [p.name for p in tmp_path.iterdir()] == ["mnist"]
    assert (tmp_path / "mnist" / "train_images.npy").read_bytes() == b"new"
    assert (tmp_path / "mnist" / "raw" / "train-images-idx3-ubyte.gz").read_bytes() == b"digits"


@pytest.mark.slow
def test_the_temporary_folder_of_a_live_writer_is_left_alone(tmp_path):
    ready = tmp_path / "ready"
    writer = stopped_creation(tmp_path / "data", "hold", ready=ready)
    try:
        wait_for(ready, writer)
        working, = (tmp_path / "data").glob(".tetrominoes.tmp-*")
        with pytest.raises(dc.DatasetNotFoundError):
            dc.load_dataset("tetrominoes", "train", tmp_path / "data")
        assert working.is_dir()
    finally:
        writer.kill()
        writer.communicate()
    with pytest.raises(dc.DatasetNotFoundError):
        dc.load_dataset("tetrominoes", "train", tmp_path / "data")
    assert list((tmp_path / "data").iterdir()) == []


@pytest.mark.slow
def test_two_creations_at_once_never_replace_each_others_dataset_without_force(tmp_path):
    first_ready, second_ready = tmp_path / "first", tmp_path / "second"
    first = stopped_creation(tmp_path / "data", "hold", ready=first_ready)
    wait_for(first_ready, first)
    # the second found no dataset either, made its own, and now waits for the first to finish writing
    second = stopped_creation(tmp_path / "data", "announce", "--seed", "5", ready=second_ready)
    wait_for(second_ready, second)
    (tmp_path / "first.go").touch()
    assert first.wait() == 0
    _, err = second.communicate()
    assert second.returncode == 1 and "different recipe (differs in: seed); re-run with --force" in err
    assert dc.read_metadata("tetrominoes", tmp_path / "data")["seed"] == 42
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["tetrominoes"]


def test_existing_folder_that_is_not_a_dataset_needs_force(tmp_path):
    (tmp_path / "polygons").mkdir()
    (tmp_path / "polygons" / "notes.txt").write_text("mine")
    with pytest.raises(dc.DatasetError, match="not a dataset.*--force"):
        create(create_polygons, tmp_path)

# -----------------------------------------------------------------------------
# the loader and its errors


def test_load_dataset_outputs(small_tetrominoes, polygon_root):
    for name, root, channels, classes in (("tetrominoes", small_tetrominoes, 3, 6), ("polygons", polygon_root, 1, 7)):
        images, masks = dc.load_dataset(name, "train", root)
        raw = np.load(root / name / "train_images.npy")
        assert images.dtype == torch.float32 and images.shape == (20, channels, 64, 64)
        assert masks.dtype == torch.int64 and masks.shape == (20, 64, 64)
        assert 0 <= images.min() and images.max() <= 1 and 0 <= masks.min() and masks.max() < classes
        as_stored = images.permute(0, 2, 3, 1) if channels == 3 else images[:, 0]
        assert torch.equal(as_stored, torch.from_numpy(raw).float() / 255)
        small_images, small_masks = dc.load_dataset(name, "val", root, limit=3)
        assert small_images.shape[0] == 3 and torch.equal(small_masks, dc.load_dataset(name, "val", root)[1][:3])


def test_load_dataset_uses_env_root(small_tetrominoes, monkeypatch):
    monkeypatch.setenv(settings.DATA_ROOT_ENV, str(small_tetrominoes))
    assert dc.load_dataset("tetrominoes", "test")[0].shape == (5, 3, 64, 64)


def test_loader_name_split_and_missing_errors(tmp_path, small_tetrominoes):
    with pytest.raises(dc.UnknownDatasetError, match="valid names: tetrominoes, mnist, multi_mnist, polygons"):
        dc.load_dataset("tetris", "train", small_tetrominoes)
    with pytest.raises(dc.UnknownDatasetError):
        dc.get_info("tetris")
    with pytest.raises(dc.DatasetError, match="unknown split 'dev'.*train, val, test"):
        dc.load_dataset("tetrominoes", "dev", small_tetrominoes)
    with pytest.raises(dc.DatasetError, match="the first 21 samples asked for, but the tetrominoes train split holds 20"):
        dc.load_dataset("tetrominoes", "train", small_tetrominoes, limit=21)
    with pytest.raises(dc.DatasetNotFoundError) as e:
        dc.load_dataset("polygons", "train", tmp_path)
    assert f"python data_scripts/create_polygons.py --data-root {tmp_path}" in str(e.value)
    with pytest.raises(dc.DatasetNotFoundError) as e:
        dc.load_dataset("mnist", "test", tmp_path)
    assert f"python data_scripts/download_mnist.py --data-root {tmp_path}" in str(e.value)
    assert f"--from-dir DIR --data-root {tmp_path}" in str(e.value)


def test_missing_dataset_message_in_default_root(tmp_path, monkeypatch):
    monkeypatch.delenv(settings.DATA_ROOT_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(dc.DatasetNotFoundError, match=r"Create it with:\npython data_scripts/create_tetrominoes.py$"):
        dc.load_dataset("tetrominoes", "train")


@pytest.mark.parametrize("file, array, problem", [
    ("train_images.npy", np.zeros((3, 64, 64, 3), np.float32), "dtype is float32"),
    ("train_images.npy", np.zeros((3, 64, 64), np.uint8), r"shape is \(3, 64, 64\)"),
    ("train_masks.npy", np.zeros((3, 32, 32), np.uint8), "shape is"),
    ("train_masks.npy", np.zeros((3, 64, 64), np.int64), "dtype is int64"),
    ("train_masks.npy", np.full((3, 64, 64), 6, np.uint8), "class id 6"),
    ("train_masks.npy", np.zeros((4, 64, 64), np.uint8), "holds 4 masks but train_images.npy holds 3"),
])
def test_loader_rejects_bad_files(tmp_path, file, array, problem):
    folder = tmp_path / "tetrominoes"
    folder.mkdir()
    write_metadata(folder, "tetrominoes")
    np.save(folder / "train_images.npy", np.zeros((3, 64, 64, 3), np.uint8))
    np.save(folder / "train_masks.npy", np.zeros((3, 64, 64), np.uint8))
    np.save(folder / file, array)
    with pytest.raises(dc.CorruptDatasetError, match=problem) as e:
        dc.load_dataset("tetrominoes", "train", tmp_path)
    assert str(folder / file) in str(e.value)
    assert f"create_tetrominoes.py --data-root {tmp_path} --force" in str(e.value)


def test_loader_refuses_folders_the_scripts_did_not_write(tmp_path, small_tetrominoes):
    folder = tmp_path / "tetrominoes"
    folder.mkdir()
    for f in ("train_images.npy", "train_masks.npy"):
        (folder / f).write_bytes((small_tetrominoes / "tetrominoes" / f).read_bytes())
    with pytest.raises(dc.DatasetError, match=f"has no dataset.json.*\n.*create_tetrominoes.py --data-root {tmp_path} --force"):
        dc.load_dataset("tetrominoes", "train", tmp_path)
    (folder / "dataset.json").write_text(json.dumps({"format_version": 1, "dataset": "tetrominoes"}))
    with pytest.raises(dc.DatasetError, match="(?s)older version of the data scripts.*--force"):
        dc.load_dataset("tetrominoes", "train", tmp_path)
    (tmp_path / "mnist" / "raw").mkdir(parents=True)  # what a failed download leaves: the offline way still shown
    with pytest.raises(dc.DatasetError,
                       match=f"has no dataset.json(?s:.*)--from-dir DIR --data-root {tmp_path} --force"):
        dc.read_metadata("mnist", tmp_path)  # as train.py checks a run's data


def test_loader_rejects_unreadable_file(tmp_path):
    folder = tmp_path / "polygons"
    folder.mkdir()
    write_metadata(folder, "polygons")
    (folder / "val_images.npy").write_bytes(b"not a numpy file")
    np.save(folder / "val_masks.npy", np.zeros((3, 64, 64), np.uint8))
    with pytest.raises(dc.CorruptDatasetError, match="--force"):
        dc.load_dataset("polygons", "val", tmp_path)

# -----------------------------------------------------------------------------
# recipes


def test_tetromino_recipe():
    rs = np.random.RandomState(7)
    wrapped = 0
    for _ in range(300):
        image, mask = np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64), np.uint8)
        n = create_tetrominoes.draw_image(rs, image, mask)
        assert 1 <= n <= 5 and (mask > 0).sum() == 196 * n  # 4 cells of 7x7 each, never overlapping
        assert not mask[-1].any() and not mask[:, -1].any()  # exclusive bounds: never at the bottom or right edge
        if n <= 4:  # the families are drawn without repetition
            assert len(np.unique(mask[mask > 0])) == n
        if n == 1:  # every cell: its colour inside, colour + colour // 2 (mod 256) on its ring
            rows, cols = np.nonzero(mask)
            for r in range(rows.min(), rows.max(), 7):
                for c in range(cols.min(), cols.max(), 7):
                    if mask[r, c]:
                        cell = image[r:r + 7, c:c + 7].astype(int)
                        colour = cell[3, 3]
                        assert (cell[1:-1, 1:-1] == colour).all()
                        ring = cell[create_tetrominoes.CELL_RING]
                        assert (ring == (colour + colour // 2) % 256).all()
                        wrapped += int((colour > 170).any())
    assert wrapped > 0  # some rings wrapped around


@pytest.mark.slow
def test_default_tetrominoes_equal_the_papers_arrays(tmp_path):
    create_tetrominoes.main(["--data-root", str(tmp_path)])  # the paper's seed and sizes
    folder, info = tmp_path / "tetrominoes", dc.get_info("tetrominoes")
    for name, digest in info.paper_sha256.items():
        assert hashlib.sha256(np.load(folder / f"{name}.npy").tobytes()).hexdigest() == digest, name
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["paper_identical"] is True
    # the statistics of the paper's train split (docs/methods.md, "Data")
    assert meta["stats"]["images_with_1_to_5_pieces"]["train"] == [1952, 2032, 2000, 2037, 1979]
    assert verify_datasets.main(["tetrominoes", "--data-root", str(tmp_path)]) == 0


def test_stored_tetrominoes(small_tetrominoes):
    for split in dc.SPLITS:
        images = np.load(small_tetrominoes / "tetrominoes" / f"{split}_images.npy")
        masks = np.load(small_tetrominoes / "tetrominoes" / f"{split}_masks.npy")
        pieces = np.load(small_tetrominoes / "tetrominoes" / f"{split}_pieces.npy")
        assert images.dtype == masks.dtype == np.uint8 and images.shape[1:] == (64, 64, 3)
        assert ((masks > 0).sum((1, 2)) == 196 * pieces.astype(int)).all() and masks.max() <= 5
        assert (images[masks == 0] == 0).all()


def test_polygon_recipe():
    rng = np.random.default_rng(3)
    sides_seen = set()
    for _ in range(200):
        image, mask, info = create_polygons.make_sample(rng)
        polygons = info["polygons"]
        assert 1 <= len(polygons) <= 4 and len(polygons) + info["left_out"] <= 4
        # 8-connected components: polygons at least 1 pixel apart form one component each
        regions, n = ndimage.label(mask > 0, structure=np.ones((3, 3)))
        assert n == len(polygons)
        for p in polygons:
            cy, cx = int(p["cy"]), int(p["cx"])
            region = regions == regions[cy, cx]
            assert regions[cy, cx] > 0
            assert (mask[region] == p["sides"] - 2).all() and (image[region] == p["intensity"]).all()
            assert 128 <= p["intensity"] <= 255 and 8 <= p["radius"] <= 14
            expected_area = 0.5 * p["sides"] * p["radius"] ** 2 * np.sin(2 * np.pi / p["sides"])
            assert abs(region.sum() - expected_area) < 0.25 * expected_area
            sides_seen.add(p["sides"])
        assert ((image > 0) == (mask > 0)).all()
    assert sides_seen == set(range(3, 9))


def test_polygon_rasterise_square():
    # a square of circumradius 5 * sqrt(2) rotated 45 degrees = the axis-aligned 10 x 10 square
    pixels = create_polygons.rasterise(4, 5 * np.sqrt(2), np.pi / 4, 20.0, 30.0, (64, 64))
    assert pixels.sum() == 100 and pixels[15:25, 25:35].all()


def test_stored_polygons(polygon_root):
    masks = np.load(polygon_root / "polygons" / "train_masks.npy")
    images = np.load(polygon_root / "polygons" / "train_images.npy")
    assert masks.max() <= 6 and ((images > 0) == (masks > 0)).all() and (masks > 0).any((1, 2)).all()

# -----------------------------------------------------------------------------
# bilinear resize, IDX files, checksums, MNIST


@pytest.mark.parametrize("compress", [True, False], ids=["gzip", "uncompressed"])
def test_read_idx(tmp_path, compress):
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "images", images, compress)
    write_idx(tmp_path / "labels", np.array([1, 2, 9]), compress)
    assert np.array_equal(mnist_files.read_idx(tmp_path / "images"), images)
    assert mnist_files.read_idx(tmp_path / "labels").tolist() == [1, 2, 9]
    with (gzip.open if compress else open)(tmp_path / "bad_magic", "wb") as f:
        f.write(struct.pack(">II", 2052, 1) + b"\0")
    with pytest.raises(dc.DatasetError, match="bad_magic: magic number 2052"):
        mnist_files.read_idx(tmp_path / "bad_magic")
    with (gzip.open if compress else open)(tmp_path / "short", "wb") as f:
        f.write(struct.pack(">IIII", 2051, 2, 28, 28) + bytes(100))
    with pytest.raises(dc.DatasetError, match="short: header says 2 x 28 x 28 = 1568 bytes, the file holds 100"):
        mnist_files.read_idx(tmp_path / "short")


def test_content_checksum_is_the_same_gzipped_or_not(tmp_path):
    (tmp_path / "plain").write_bytes(b"hello")
    with gzip.open(tmp_path / "packed.gz", "wb", compresslevel=1) as f:
        f.write(b"hello")
    assert mnist_files.content_md5(tmp_path / "plain") == mnist_files.content_md5(tmp_path / "packed.gz") \
        == hashlib.md5(b"hello").hexdigest()
    with pytest.raises(dc.DatasetError, match="plain: decompressed MD5 is .*expected 0123.*not the standard MNIST file x"):
        mnist_files.check_file(tmp_path / "plain", "x", "0123")
    (tmp_path / "cut.gz").write_bytes((tmp_path / "packed.gz").read_bytes()[:12])
    with pytest.raises(dc.DatasetError, match="cut.gz: cannot be decompressed"):
        mnist_files.content_md5(tmp_path / "cut.gz")


@pytest.fixture(scope="module")
def fake_mnist(tmp_path_factory):
    """100 training and 20 test 'digits' of random noise, and their checksum table."""
    rng = np.random.default_rng(0)
    source = tmp_path_factory.mktemp("mnist_files")
    sums = write_fake_mnist(source, rng.integers(0, 256, (100, 28, 28)), rng.integers(0, 10, 100),
                            rng.integers(0, 256, (20, 28, 28)), rng.integers(0, 10, 20))
    return source, sums


def test_mnist_from_dir(tmp_path, fake_mnist, capsys):
    source, sums = fake_mnist
    out = download_mnist.main(["--data-root", str(tmp_path), "--from-dir", str(source)], checksums=sums)
    assert out == tmp_path / "mnist" and sorted(p.name for p in (out / "raw").iterdir()) == sorted(f"{n}.gz" for n in sums)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["split_sizes"] == {"train": 85, "val": 15, "test": 20} and meta["seed"] == 42

    digits = mnist_files.read_idx(source / "train-images-idx3-ubyte.gz")
    labels = mnist_files.read_idx(source / "train-labels-idx1-ubyte.gz")
    # the paper's split: torch.manual_seed(42); random_split -> randperm under that seed, 85% / 15%
    torch.manual_seed(42)
    order = torch.randperm(100).numpy()
    resized = F.interpolate(torch.from_numpy(digits.copy()).float().div(255)[:, None], size=(56, 56), mode="bilinear",
                            align_corners=False)[:, 0].numpy()
    expected_masks = np.where(resized > 0.5, labels[:, None, None] + 1, 0)
    for split, index in (("train", order[:85]), ("val", order[85:])):
        images, masks = dc.load_dataset("mnist", split, tmp_path)
        assert np.load(out / f"{split}_indices.npy").tolist() == index.tolist()  # traceable to the digit
        assert np.array_equal(masks.numpy(), expected_masks[index])
        assert np.array_equal(np.rint(images[:, 0].numpy() * 255), np.rint(resized[index] * 255))
    test_images, test_masks = dc.load_dataset("mnist", "test", tmp_path)
    assert test_images.shape == (20, 1, 56, 56) and test_masks.max() <= 10
    assert np.load(out / "test_indices.npy").tolist() == list(range(20))

    capsys.readouterr()
    download_mnist.main(["--data-root", str(tmp_path)], checksums=sums)  # no download needed: complete
    assert "nothing to do" in capsys.readouterr().out
    download_mnist.main(["--data-root", str(tmp_path), "--seed", "1", "--force"], checksums=sums)
    assert sorted(p.name for p in (out / "raw").iterdir()) == sorted(f"{n}.gz" for n in sums)  # raw/ survives
    assert not np.array_equal(np.load(out / "train_indices.npy"), order[:85])


def test_mnist_from_a_folder_of_uncompressed_files(tmp_path, fake_mnist):
    source, sums = fake_mnist
    plain = tmp_path / "plain"
    plain.mkdir()
    for name in sums:
        (plain / name).write_bytes(mnist_files.read_bytes(source / f"{name}.gz"))
    download_mnist.main(["--data-root", str(tmp_path / "a"), "--from-dir", str(plain)], checksums=sums)
    download_mnist.main(["--data-root", str(tmp_path / "b"), "--from-dir", str(source)], checksums=sums)
    assert npy_bytes(tmp_path / "a" / "mnist") == npy_bytes(tmp_path / "b" / "mnist")


def test_mnist_from_a_folder_with_kaggles_file_names(tmp_path, fake_mnist):
    source, sums = fake_mnist
    kaggle = tmp_path / "kaggle"
    kaggle.mkdir()
    for name in sums:  # Kaggle's MNIST: train-images.idx3-ubyte, uncompressed
        (kaggle / name.replace("-idx", ".idx")).write_bytes(mnist_files.read_bytes(source / f"{name}.gz"))
    download_mnist.main(["--data-root", str(tmp_path / "a"), "--from-dir", str(kaggle)], checksums=sums)
    assert sorted(p.name for p in (tmp_path / "a" / "mnist" / "raw").iterdir()) == sorted(sums)  # standard names
    download_mnist.main(["--data-root", str(tmp_path / "b"), "--from-dir", str(source)], checksums=sums)
    assert npy_bytes(tmp_path / "a" / "mnist") == npy_bytes(tmp_path / "b" / "mnist")


def test_mnist_from_dir_errors(tmp_path, fake_mnist):
    source, sums = fake_mnist
    wrong = {**sums, "t10k-labels-idx1-ubyte": "0" * 32}
    with pytest.raises(dc.DatasetError, match="t10k-labels-idx1-ubyte.gz: decompressed MD5 is .* expected 0000"):
        download_mnist.main(["--data-root", str(tmp_path), "--from-dir", str(source)], checksums=wrong)
    assert not (tmp_path / "mnist" / "raw" / "t10k-labels-idx1-ubyte.gz").exists()
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "train-images-idx3-ubyte.gz").write_bytes((source / "train-images-idx3-ubyte.gz").read_bytes())
    with pytest.raises(dc.DatasetError, match="missing train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
                                              "t10k-labels-idx1-ubyte .*needs all four MNIST files"):
        download_mnist.main(["--data-root", str(tmp_path), "--from-dir", str(partial)], checksums=sums)


def test_mnist_from_dir_names_every_bad_file_before_copying_any(tmp_path, fake_mnist):
    source, sums = fake_mnist
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for name in sums:
        (mixed / f"{name}.gz").write_bytes((source / f"{name}.gz").read_bytes())
    (mixed / "train-labels-idx1-ubyte.gz").write_bytes((source / "train-labels-idx1-ubyte.gz").read_bytes()[:12])
    wrong = {**sums, "train-images-idx3-ubyte": "1" * 32, "t10k-labels-idx1-ubyte": "0" * 32}
    with pytest.raises(dc.DatasetError) as e:
        download_mnist.main(["--data-root", str(tmp_path), "--from-dir", str(mixed)], checksums=wrong)
    message = str(e.value)
    assert message.startswith(f"--from-dir {mixed}: 3 of the 4 files cannot be used")
    assert "train-images-idx3-ubyte.gz: decompressed MD5 is" in message and "expected 1111" in message
    assert "train-labels-idx1-ubyte.gz: cannot be decompressed" in message
    assert "t10k-labels-idx1-ubyte.gz: decompressed MD5 is" in message and "t10k-images" not in message
    assert not (tmp_path / "mnist" / "raw").exists() or not any((tmp_path / "mnist" / "raw").iterdir())
    with pytest.raises(dc.DatasetError, match="--from-dir .*notes.txt: not a folder"):
        (tmp_path / "notes.txt").write_text("")
        download_mnist.main(["--data-root", str(tmp_path), "--from-dir", str(tmp_path / "notes.txt")], checksums=sums)


def test_a_killed_copy_of_the_mnist_files_leaves_no_part_file(tmp_path, fake_mnist):
    source, sums = fake_mnist
    raw = tmp_path / "mnist" / "raw"
    raw.mkdir(parents=True)
    (raw / "train-images-idx3-ubyte.part").write_bytes(b"half a copy of an uncompressed source")  # a dead copier
    mnist_files.fetch_raw(raw, source, sums)
    assert sorted(p.name for p in raw.iterdir()) == sorted(f"{name}.gz" for name in sums)


def offline(url, timeout):  # urllib.request.urlopen on a machine without a network
    raise OSError("no network")


def test_mnist_downloads_are_checked_against_the_checksums_given(tmp_path, fake_mnist, monkeypatch):
    source, sums = fake_mnist
    served = []

    def mirror(url, timeout):  # serves the fake files, as the first mirror would the real ones
        served.append(url)
        return open(source / url.rsplit("/", 1)[1], "rb")
    monkeypatch.setattr(mnist_files.urllib.request, "urlopen", mirror)
    paths = mnist_files.fetch_raw(tmp_path / "raw", checksums=sums)
    assert len(served) == 4 and all(url.startswith(mnist_files.MIRRORS[0]) for url in served)
    assert {name: mnist_files.content_md5(path) for name, path in paths.items()} == sums


def test_a_complete_mnist_without_its_raw_files_fetches_them_for_multi_mnist(tmp_path, fake_mnist, capsys,
                                                                             monkeypatch):
    source, sums = fake_mnist
    out = download_mnist.main(["--data-root", str(tmp_path), "--from-dir", str(source)], checksums=sums)
    shutil.rmtree(out / "raw")
    monkeypatch.setattr(mnist_files.urllib.request, "urlopen", offline)
    capsys.readouterr()
    download_mnist.main(["--data-root", str(tmp_path)], checksums=sums)  # offline: MNIST is still complete
    captured = capsys.readouterr()
    assert "nothing to do" in captured.out and "lacks raw MNIST files" in captured.err and "--from-dir" in captured.err
    with pytest.raises(dc.DatasetError, match=f"download_mnist.py --data-root {tmp_path}\n"):  # names the root
        mnist_files.load_digits(out / "raw", "train", sums)
    download_mnist.main(["--data-root", str(tmp_path), "--from-dir", str(source)], checksums=sums)
    assert sorted(p.name for p in (out / "raw").iterdir()) == sorted(f"{n}.gz" for n in sums)
    assert "fetched the raw MNIST files" in capsys.readouterr().out


@pytest.mark.parametrize("force", [["--force"], []], ids=["force", "empty-folder"])
def test_a_dataset_folder_that_is_a_symbolic_link_is_refused_before_work(tmp_path, monkeypatch, force):
    real = tmp_path / "elsewhere" / "tetrominoes"
    real.mkdir(parents=True)
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "tetrominoes").symlink_to(real)
    monkeypatch.setattr(create_tetrominoes, "generate", lambda *a, **k: pytest.fail("generated before the check"))
    with pytest.raises(dc.DatasetError, match=f"is a symbolic link to .*; write the dataset there: --data-root "
                                              f"{real.parent}$"):
        create_tetrominoes.main(["--data-root", str(tmp_path / "root"), "--train", "4", "--val", "2", "--test", "2",
                                 *force])
    assert (tmp_path / "root" / "tetrominoes").is_symlink() and list(real.iterdir()) == []


def test_a_symbolic_link_to_a_complete_dataset_is_used_as_it_is(tmp_path, capsys):
    args = ["--train", "4", "--val", "2", "--test", "2"]
    create_tetrominoes.main(["--data-root", str(tmp_path / "elsewhere"), *args])
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "tetrominoes").symlink_to(tmp_path / "elsewhere" / "tetrominoes")
    capsys.readouterr()
    create_tetrominoes.main(["--data-root", str(tmp_path / "root"), *args])  # nothing to write: no refusal
    assert "nothing to do" in capsys.readouterr().out


def test_mnist_download_failure_message(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist_files.urllib.request, "urlopen", offline)
    with pytest.raises(dc.DatasetError) as e:
        mnist_files.fetch_raw(tmp_path / "raw")
    message = str(e.value)
    assert "could not download train-images-idx3-ubyte" in message and "no network" in message
    assert all(mirror in message for mirror in mnist_files.MIRRORS)
    assert "--from-dir DIR" in message and "gzip'd or not" in message


def test_multi_mnist(tmp_path):
    # identical square "digits" with labels 0..9: each placed digit covers the same number of pixels
    digits = np.zeros((30, 28, 28), np.uint8)
    digits[:, 9:19, 9:19] = 200
    sums = write_fake_mnist(tmp_path / "source", digits, np.arange(30) % 10, digits[:5], np.arange(5))
    download_mnist.main(["--data-root", str(tmp_path), "--from-dir", str(tmp_path / "source")], checksums=sums)
    out = create_multi_mnist.main(["--data-root", str(tmp_path), *TINY], checksums=sums)
    glyph_pixels = create_multi_mnist.glyph(digits[0]).sum()
    assert 200 < glyph_pixels < 42 * 42
    for split, n in (("train", 20), ("val", 5), ("test", 5)):
        images = np.load(out / f"{split}_images.npy")
        masks = np.load(out / f"{split}_masks.npy")
        counts = np.load(out / f"{split}_counts.npy").astype(int)
        placed = np.load(out / f"{split}_digits.npy")
        assert images.shape == (n, 128, 128) and masks.shape == (n, 128, 128) and counts.shape == (n,)
        assert ((counts >= 1) & (counts <= 4)).all() and ((placed >= 0).sum(1) == counts).all()
        assert set(np.unique(images)) <= {0, 255} and ((images == 255) == (masks > 0)).all()  # binarised
        assert ((masks > 0).sum((1, 2)) == counts * glyph_pixels).all()  # never overlapping
        for mask, row in zip(masks, placed):  # each placed digit's label is in the mask
            assert set(np.unique(mask[mask > 0])) == {d % 10 + 1 for d in row[row >= 0]}
    assert dc.load_dataset("multi_mnist", "train", tmp_path)[0].shape == (20, 1, 128, 128)


def test_multi_mnist_needs_raw_mnist(tmp_path):
    with pytest.raises(dc.DatasetError, match=f"python data_scripts/download_mnist.py --data-root {tmp_path}"):
        create(create_multi_mnist, tmp_path)


@pytest.fixture(scope="module")
def paper_mnist_root(tmp_path_factory):
    if not all(mnist_files.find_file(SHARED_MNIST, name) for name in mnist_files.MNIST_MD5):
        pytest.skip(f"the four MNIST files are not in {SHARED_MNIST}: put them there (gzip'd or not, from any "
                    f"source) to check MNIST and Multi-MNIST against the paper's arrays")
    root = tmp_path_factory.mktemp("paper_mnist")
    download_mnist.main(["--data-root", str(root), "--from-dir", str(SHARED_MNIST)])
    create_multi_mnist.main(["--data-root", str(root)])
    return root


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mnist", "multi_mnist"])
def test_default_mnist_datasets_equal_the_papers_arrays(name, paper_mnist_root):
    folder, info = paper_mnist_root / name, dc.get_info(name)
    for array, digest in info.paper_sha256.items():
        assert hashlib.sha256(np.load(folder / f"{array}.npy").tobytes()).hexdigest() == digest, array
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["paper_identical"] is True
    assert meta["split_sizes"] == dict(zip(dc.SPLITS, info.paper_split_sizes))
    if name == "mnist":  # the first indices of the paper's split (docs/methods.md, "Data")
        assert np.load(folder / "train_indices.npy")[:5].tolist() == [37542, 43087, 2992, 25810, 39634]
        assert np.load(folder / "val_indices.npy")[:3].tolist() == [24161, 50189, 26739]
    else:
        assert meta["stats"]["images_with_1_to_4_digits"]["train"] == [2494, 2559, 2499, 2448]
    assert verify_datasets.main([name, "--data-root", str(paper_mnist_root)]) == 0


# -----------------------------------------------------------------------------
# command line and pictures


@pytest.mark.parametrize("module", [create_tetrominoes, create_polygons, create_multi_mnist, download_mnist,
                                    show_samples, verify_datasets, import_folder])
def test_help(module, capsys):
    with pytest.raises(SystemExit) as e:
        module.main(["--help"])
    assert e.value.code == 0
    assert "--data-root" in capsys.readouterr().out


@pytest.mark.slow
def test_cli(tmp_path):
    env = {**os.environ, settings.DATA_ROOT_ENV: str(tmp_path)}
    run = subprocess.run([sys.executable, "data_scripts/create_polygons.py", "--train", "3", "--val", "2",
                          "--test", "2", "--seed", "4"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert dc.load_dataset("polygons", "train", tmp_path)[1].shape == (3, 64, 64)
    run = subprocess.run([sys.executable, "data_scripts/create_multi_mnist.py", "--data-root", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 1 and "error:" in run.stderr and "download_mnist.py" in run.stderr


def test_sample_grid(tmp_path, small_tetrominoes):
    images, masks = dc.load_dataset("tetrominoes", "train", small_tetrominoes, limit=6)
    path = tmp_path / "grid.png"
    fig = plotting.sample_grid(images, masks, dc.get_info("tetrominoes").class_names, n=6)
    plotting.save_figure(fig, path.stem, path.parent)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size < 300_000
    show_samples.main(["--dataset", "tetrominoes", "--n", "4", "--data-root", str(small_tetrominoes),
                       "--out", str(tmp_path / "cli.png")])
    assert (tmp_path / "cli.png").is_file()
    with pytest.raises(SystemExit):  # a JPEG name would get a PNG written beside it under another name
        show_samples.main(["--dataset", "tetrominoes", "--data-root", str(small_tetrominoes),
                           "--out", str(tmp_path / "cli.jpg")])
    assert not (tmp_path / "cli.png").with_name("cli.jpg").exists() and len(list(tmp_path.glob("cli*"))) == 1


@pytest.mark.slow
def test_data_scripts_write_plain_lines_in_a_log(tmp_path):
    # bars are for terminals: in a log (here a pipe), one line per split and no carriage returns
    result = subprocess.run([sys.executable, "data_scripts/create_tetrominoes.py", "--data-root", str(tmp_path),
                             "--train", "8", "--val", "4", "--test", "4"], cwd=ROOT, capture_output=True, text=True,
                            check=True)
    output = result.stdout + result.stderr
    assert "\r" not in output
    assert [line for line in output.splitlines() if line.startswith("tetrominoes ")] == [
        "tetrominoes train: 8 img", "tetrominoes val: 4 img", "tetrominoes test: 4 img"]

# -----------------------------------------------------------------------------
# your own data: data_scripts/import_folder.py


def write_pair_folder(folder, n=20, seed=0):
    """`n` pairs images/imgNN.png (16x16 RGB, one grey square) and masks/imgNN.png (8-bit class ids:
    1 for a small square, 2 for a large one) and classes.txt, as a user's folder would hold them."""
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    images, masks = make_squares(n, np.random.default_rng(seed))
    for i, (image, mask) in enumerate(zip(images, masks)):
        Image.fromarray(image).save(folder / "images" / f"img{i:02d}.png")
        Image.fromarray(mask).save(folder / "masks" / f"img{i:02d}.png")
    (folder / "classes.txt").write_text("background\nsmall\nlarge\n")
    return images, masks


def file_states(folder):
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def test_import_folder_writes_a_dataset_the_loader_takes_and_keeps_the_originals(tmp_path, capsys):
    images, masks = write_pair_folder(tmp_path / "mine")
    before = file_states(tmp_path / "mine")
    out = import_folder.main([str(tmp_path / "mine"), "--name", "my_shapes", "--data-root", str(tmp_path / "data")])
    assert out == tmp_path / "data" / "my_shapes" and file_states(tmp_path / "mine") == before
    assert f"WAVES_DATA_ROOT={tmp_path / 'data'} python train.py --dataset my_shapes" in capsys.readouterr().out
    meta = dc.read_metadata("my_shapes", tmp_path / "data")
    assert meta["split_sizes"] == {"train": 16, "val": 2, "test": 2} and meta["class_names"] == ["background", "small",
                                                                                                 "large"]
    assert meta["recipe"]["command"] == f"python data_scripts/import_folder.py {tmp_path / 'mine'} --name my_shapes"
    assert meta["recipe"]["source_sha256"]["masks/img07.png"] == hashlib.sha256(
        (tmp_path / "mine" / "masks" / "img07.png").read_bytes()).hexdigest()
    names = meta["recipe"]["names"]
    assert sorted(sum(names.values(), [])) == [f"img{i:02d}" for i in range(20)]
    info = dc.get_info("my_shapes", tmp_path / "data")
    assert (info.image_size, info.channels, info.num_classes) == ((16, 16), 3, 3)
    for split in dc.SPLITS:  # each row is its named pair, exactly
        x, y = dc.load_dataset("my_shapes", split, tmp_path / "data")
        rows = [int(name[3:]) for name in names[split]]
        assert torch.equal(x, torch.from_numpy(images[rows]).permute(0, 3, 1, 2).float() / 255)
        assert torch.equal(y, torch.from_numpy(masks[rows]).long())
    dc.check_arrays("my_shapes", tmp_path / "data")
    assert "my_shapes" in dc.imported_datasets(tmp_path / "data")
    capsys.readouterr()
    assert verify_datasets.main(["my_shapes", "--data-root", str(tmp_path / "data")]) == 0
    assert "my_shapes    6/6 arrays intact; imported" in capsys.readouterr().out
    show_samples.main(["--dataset", "my_shapes", "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "s.png")])
    assert (tmp_path / "s.png").is_file()
    import_folder.main([str(tmp_path / "mine"), "--name", "my_shapes", "--data-root", str(tmp_path / "data")])
    assert "nothing to do" in capsys.readouterr().out
    import_folder.main([str(tmp_path / "mine"), "--name", "my_shapes", "--data-root", str(tmp_path / "data"),
                        "--seed", "1", "--force"])
    assert dc.read_metadata("my_shapes", tmp_path / "data")["recipe"]["names"] != names  # another seed, another split
    (tmp_path / "mine" / "masks" / "img03.png").write_bytes((tmp_path / "mine" / "masks" / "img04.png").read_bytes())
    with pytest.raises(dc.DatasetError, match="different recipe.*recipe.source_sha256.*--force"):
        import_folder.main([str(tmp_path / "mine"), "--name", "my_shapes", "--data-root", str(tmp_path / "data"),
                            "--seed", "1"])


def test_import_folder_splits_by_given_lists(tmp_path):
    write_pair_folder(tmp_path / "mine", n=6)
    lists = tmp_path / "lists"
    lists.mkdir()
    for split, names in (("train", "img00\nimg01.png\nimg02\n"), ("val", "img03\n"), ("test", "img04\nimg05\n")):
        (lists / f"{split}.txt").write_text(names)
    import_folder.main([str(tmp_path / "mine"), "--name", "listed", "--data-root", str(tmp_path),
                        "--split-lists", str(lists)])
    assert dc.read_metadata("listed", tmp_path)["recipe"]["names"] == {
        "train": ["img00", "img01", "img02"], "val": ["img03"], "test": ["img04", "img05"]}
    (lists / "val.txt").write_text("img03\nimg02\nimg09\n")
    (lists / "test.txt").write_text("img04\n")
    with pytest.raises(dc.DatasetError) as e:
        import_folder.main([str(tmp_path / "mine"), "--name", "listed2", "--data-root", str(tmp_path),
                            "--split-lists", str(lists)])
    assert f"{lists / 'val.txt'}:2: img02 is already listed in train.txt" in str(e.value)
    assert f"{lists / 'val.txt'}:3: img09 is not a pair of the folder" in str(e.value)
    assert f"img05: a pair in no list of {lists}" in str(e.value)
    assert not (tmp_path / "listed2").exists()


def test_import_folder_refuses_a_bad_folder_file_by_file_before_writing(tmp_path):
    folder = tmp_path / "mine"
    write_pair_folder(folder, n=12)
    (folder / "masks" / "img00.png").unlink()  # an image without its mask
    (folder / "images" / "img01.png").unlink()  # a mask without its image
    (folder / "images" / "img02.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")  # does not decode
    Image.fromarray(np.zeros((8, 16), np.uint8)).save(folder / "masks" / "img03.png")  # not its image's size
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(folder / "images" / "img04.png")  # not the others' size
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(folder / "masks" / "img04.png")
    Image.fromarray(np.full((16, 16), 7, np.uint8)).save(folder / "masks" / "img05.png")  # an id without a name
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(folder / "masks" / "img06.png")  # colours, not ids
    (folder / "images" / "notes.txt").write_text("mine")
    before = file_states(folder)
    with pytest.raises(dc.DatasetError) as e:
        import_folder.main([str(folder), "--name", "broken", "--data-root", str(tmp_path / "data")])
    message = str(e.value)
    expected = [f"{folder / 'images' / 'img00.png'}: no mask {folder / 'masks' / 'img00.png'}",
                f"{folder / 'masks' / 'img01.png'}: no image {folder / 'images' / 'img01.png'}",
                f"{folder / 'images' / 'img02.png'}: cannot be decoded as an image",
                f"{folder / 'masks' / 'img03.png'}: 16x8 pixels, its image img03.png 16x16",
                f"{folder / 'images' / 'img04.png'}: 20x20 pixels, the other images 16x16",
                f"{folder / 'masks' / 'img05.png'}: class id(s) 7 but only 3 classes are named (0..2)",
                f"{folder / 'masks' / 'img06.png'}: a RGB image: a mask holds one class id per pixel",
                f"{folder / 'images' / 'notes.txt'}: not a PNG file"]
    assert message.startswith(f"{folder}: {len(expected)} problem(s), nothing was written")
    assert all(line in message for line in expected), message
    assert not (tmp_path / "data").exists() and file_states(folder) == before
    (folder / "classes.txt").unlink()
    with pytest.raises(dc.DatasetError, match="classes.txt: missing; write the class names there"):
        import_folder.main([str(folder), "--name", "broken", "--data-root", str(tmp_path / "data")])


@pytest.mark.parametrize("name", ["tetrominoes", "My-Data", "a.b", ""])
def test_import_folder_refuses_names_a_tool_could_not_take(tmp_path, name):
    write_pair_folder(tmp_path / "mine", n=3)
    with pytest.raises(dc.DatasetError, match="--name .*lower-case letters"):
        import_folder.main([str(tmp_path / "mine"), "--name", name, "--data-root", str(tmp_path / "data")])


def test_import_folder_refuses_a_data_root_it_cannot_write_before_reading_the_pairs(tmp_path, monkeypatch):
    write_pair_folder(tmp_path / "mine", n=3)
    monkeypatch.setattr(import_folder, "read_pairs", no_work)
    (tmp_path / "data").write_text("")
    with pytest.raises(dc.DatasetError, match="data is a file, not a folder"):
        import_folder.main([str(tmp_path / "mine"), "--name", "mine", "--data-root", str(tmp_path / "data")])


def test_import_folder_converts_gray_16_bit_transparent_and_palette_files(tmp_path):
    folder = tmp_path / "mine"
    write_pair_folder(folder, n=4)
    Image.fromarray(np.full((16, 16), 65535, np.uint16)).save(folder / "images" / "img00.png")  # 16-bit gray
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 0], rgba[:8, :, 3] = 200, 255  # red, opaque in the top half only
    Image.fromarray(rgba).save(folder / "images" / "img01.png")
    palette = Image.fromarray(np.full((16, 16), 2, np.uint8), mode="P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0])
    palette.save(folder / "masks" / "img01.png")  # a palette mask: its indices are the ids
    import_folder.main([str(folder), "--name", "mixed", "--data-root", str(tmp_path), "--split-lists",
                        str(split_lists(tmp_path, ["img00", "img01"], ["img02"], ["img03"]))])
    images = np.load(tmp_path / "mixed" / "train_images.npy")
    assert images.shape == (2, 16, 16, 3) and (images[0] == 255).all()  # gray copied into 3 channels
    assert (images[1, :8, :, 0] == 200).all() and (images[1, 8:] == 0).all()  # transparent -> black
    assert (np.load(tmp_path / "mixed" / "train_masks.npy")[1] == 2).all()
    gray = tmp_path / "gray"
    (gray / "images").mkdir(parents=True)
    (gray / "masks").mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8), 5 * i, np.uint8)).save(gray / "images" / f"g{i}_mask.png")
        Image.fromarray(np.full((8, 8), 5 * i, np.uint8)).save(gray / "images" / f"g{i}.png")
    flags = ["--masks", "images", "--mask-suffix", "_mask", "--classes", ",".join(["background"] + list("abcdefghij"))]
    with pytest.raises(dc.DatasetError, match="over or inside the folder it is read from"):
        import_folder.main([str(gray), "--name", "gray", "--data-root", str(tmp_path), *flags])
    import_folder.main([str(gray), "--name", "gray", "--data-root", str(tmp_path / "data"), *flags])
    assert dc.get_info("gray", tmp_path / "data").channels == 1
    assert dc.load_dataset("gray", "val", tmp_path / "data")[0].shape[1] == 1


def test_import_folder_turns_images_upright_as_their_exif_orientation_says(tmp_path):
    folder = tmp_path / "mine"
    images, _ = write_pair_folder(folder, n=4)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned a quarter left: shown turned a quarter right, as a phone's photo
    Image.fromarray(np.ascontiguousarray(np.rot90(images[0]))).save(folder / "images" / "img00.png", exif=exif)
    import_folder.main([str(folder), "--name", "turned", "--data-root", str(tmp_path / "data"), "--split-lists",
                        str(split_lists(tmp_path, ["img00", "img01"], ["img02"], ["img03"]))])
    assert np.array_equal(np.load(tmp_path / "data" / "turned" / "train_images.npy")[0], images[0])


def split_lists(root, train, val, test):
    lists = root / "lists"
    lists.mkdir()
    for split, names in zip(dc.SPLITS, (train, val, test)):
        (lists / f"{split}.txt").write_text("\n".join(names))
    return lists


@pytest.mark.slow
def test_imported_datasets_of_the_default_root_are_known_by_name(tmp_path):
    write_pair_folder(tmp_path / "mine", n=5)
    import_folder.main([str(tmp_path / "mine"), "--name", "my_shapes", "--data-root", str(tmp_path / "data")])
    (tmp_path / "data" / "damaged").mkdir()
    (tmp_path / "data" / "damaged" / "dataset.json").write_text('{"recipe": {"importer": "data_scripts/import_')
    code = "import dataset_config as d; print(sorted(d.DATASETS)); d.get_info('damaged')"
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, settings.DATA_ROOT_ENV: str(tmp_path / "data")})
    assert run.stdout.strip() == str(sorted([*dc.BUILT_IN, "my_shapes"]))
    assert "damaged/dataset.json is damaged" in run.stderr
    with pytest.raises(dc.UnknownDatasetError, match="import_folder.py --help"):
        dc.get_info("my_shapes", tmp_path)  # another data root: not there
    assert dc.rebuild_command(dc.read_metadata("my_shapes", tmp_path / "data"), tmp_path / "data") == (
        f"python data_scripts/import_folder.py {tmp_path / 'mine'} --name my_shapes --data-root {tmp_path / 'data'} "
        f"--force")
