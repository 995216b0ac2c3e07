"""Run directories: what a training run writes, how runs are named, found and loaded.

    <runs root>/<run name>/
        config.json        every resolved setting, num_params, the data's fingerprint, the git
                           commit, library versions, device
        metrics.csv        one row per finished epoch: train and val metrics, lr, seconds, and
                           the device, precision and threads the epoch ran with
        checkpoint.pt      the model with the best validation loss so far
        last.pt            everything needed to resume after the last finished epoch
        test_metrics.json  the best checkpoint's metrics on the test split and why training
                           ended; its presence marks the run as finished
        .lock              who runs it now (PID, host); locked while a run writes here

One process at a time writes a run directory: `locked` holds an flock on .lock for the
whole run, and a second one is refused at once, naming the holder. The kernel drops the
lock when its process dies, so a killed run never blocks the next. Files are written to a
temporary name unique to the writer, synced and renamed into place, so a run killed at
any moment leaves each file either complete or as it was; a write that fails (a full
disk) removes its temporary file and raises WriteError, keeping the file as it was.

    model, config = runs.load_model("runs/tetrominoes/nwm-linear-T100-h2-seed0")   # eval mode
"""
import contextlib
import csv
import errno
import fcntl
import io
import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path

import torch

import settings

CONFIG, METRICS, CHECKPOINT, LAST, TEST_METRICS, LOCK = (
    "config.json", "metrics.csv", "checkpoint.pt", "last.pt", "test_metrics.json", ".lock")
# the settings that may change when a run is continued: how long it trains, not what
BUDGET = ("epochs", "min_epochs", "patience", "max_minutes")


class RunConflict(Exception):
    """The run directory holds something this run cannot continue; the message says what to do."""


class DamagedFile(ValueError):
    """A run file that exists but cannot be read: truncated, emptied or overwritten."""


class WriteError(Exception):
    """A run file could not be written (full disk, read-only folder); the message names the path and free space."""

# -----------------------------------------------------------------------------
# writing and reading the files


def _free_space(path):
    """The free space on the disk holding `path` (or its nearest existing folder), in words."""
    folder = Path(path).absolute()
    while not folder.exists():
        folder = folder.parent
    return f"{shutil.disk_usage(folder).free / 2**20:,.1f} MiB free on the disk of {folder}"


def _write_bytes(path, data):
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())  # some filesystems report a full disk only here


def _save_bytes(data, path):
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")  # one per writer
    try:
        _write_bytes(tmp, data)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise WriteError(f"cannot write {path}: {e.strerror} ({_free_space(path)}); the file is kept as it "
                         f"was") from None


def make_dir(path):
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteError(f"cannot create {path}: {e.strerror} ({_free_space(path)})") from None


def save_torch(obj, path):
    buffer = io.BytesIO()  # serialised in memory: torch's own file writer reports a full disk without an errno
    torch.save(obj, buffer)
    _save_bytes(buffer.getvalue(), path)


def save_text(text, path):
    _save_bytes(text.encode(), path)


def save_json(obj, path):
    # allow_nan: metrics of an empty class are NaN; Python's json reads them back
    save_text(json.dumps(obj, indent=2, allow_nan=True) + "\n", path)


def load_json(path):
    try:
        return json.loads(Path(path).read_text())
    except ValueError as e:  # UnicodeDecodeError included
        raise DamagedFile(f"{path} is damaged (truncated or overwritten: {e})") from None


def load_torch(path, device="cpu"):
    if not Path(path).is_file():
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as e:
        reason = str(e).split(". ")[0] if str(e) else type(e).__name__  # torch adds paragraphs of advice
        raise DamagedFile(f"{path} is damaged (truncated or overwritten: {reason})") from None


def save_metrics(history, path):
    """metrics.csv from the whole history each time, so a resumed run never duplicates or loses rows."""
    buffer = io.StringIO()
    fields = list(dict.fromkeys(key for row in history for key in row))  # rows of older runs lack newer columns
    writer = csv.DictWriter(buffer, fieldnames=fields, restval="")
    writer.writeheader()
    writer.writerows(history)
    save_text(buffer.getvalue(), path)


def precision(amp):
    """What a run computes in, for its records (config.json, metrics.csv)."""
    return "bf16 autocast" if amp else "float32"


def hardware(device, amp):
    """What an epoch runs on, for its row of metrics.csv: the device's name, the precision and the
    CPU threads (the slices of one run may run on different machines)."""
    return dict(device_name=settings.device_name(device), precision=precision(amp), threads=torch.get_num_threads())


def epoch_row(epoch, train, val, lr, seconds, improved, hardware=None):
    """One row of metrics.csv: the epoch's train and val metrics, learning rate, seconds, whether it
    improved, and what it ran on (`hardware`, see hardware())."""
    from metrics import METRIC_NAMES  # keeps `import runs` light

    row = {"epoch": epoch}
    for prefix, metrics in (("train", train), ("val", val)):
        row.update({f"{prefix}_{name}": metrics[name] for name in METRIC_NAMES})
    row.update(lr=lr, seconds=round(seconds, 3), best=int(improved))
    row.update(hardware or {})
    return row


def save_epoch(run_dir, state, model, optimizer, generator, val, improved):
    """Writes what a finished epoch leaves: last.pt (everything a resume needs, with the training
    `state` whose history holds the epoch's row), checkpoint.pt when the epoch `improved` (with its
    `val` metrics), and metrics.csv. last.pt goes first: a run stopped after it resumes from it, and
    it can restore the other two (open_run)."""
    run_dir = Path(run_dir)
    save_torch(dict(model=model.state_dict(), optimizer=optimizer.state_dict(), generator=generator.get_state(),
                    state=state), run_dir / LAST)
    if improved:
        save_torch({"model": model.state_dict(), "epoch": state["epoch"], "val": val}, run_dir / CHECKPOINT)
    save_metrics(state["history"], run_dir / METRICS)


def is_finished(run_dir):
    return (Path(run_dir) / TEST_METRICS).is_file()


def load_model(run_dir, device="cpu", which=CHECKPOINT):
    """(model, config) of a run, with the weights of its best checkpoint (or `which`), in eval mode;
    DamagedFile when one of the two files cannot be read."""
    from models import build_model, model_config_keys  # keeps `import runs` light

    run_dir = Path(run_dir)
    config = load_json(run_dir / CONFIG)
    state = load_torch(run_dir / which, device)
    keys = model_config_keys(config["model"])
    model = build_model(config["model"], **{k: config[k] for k in keys if k in config})
    model.load_state_dict(state["model"])
    return model.to(device).eval(), config

def git_state(repo=Path(__file__).resolve().parent):
    """{"commit": the checkout's commit, "dirty": whether tracked files differ from it}; None
    for both outside a git checkout (e.g. an unpacked release)."""
    def git(*args):
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10)
    try:
        commit = git("rev-parse", "HEAD")
        if commit.returncode != 0:
            return {"commit": None, "dirty": None}
        status = git("status", "--porcelain", "--untracked-files=no")
        return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


@contextlib.contextmanager
def locked(run_dir):
    """Holds run_dir's lock for the `with` block (creating the folder); RunConflict at once, naming
    the holder, when another process holds it. Temporary files left by a killed writer are removed."""
    run_dir = Path(run_dir)
    make_dir(run_dir)
    try:
        f = open(run_dir / LOCK, "a+")
    except OSError as e:
        raise WriteError(f"cannot create {run_dir / LOCK}: {e.strerror} ({_free_space(run_dir)})") from None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise RunConflict(f"{run_dir} is in use by {holder}: two runs writing into one directory would "
                              f"corrupt it. Wait for that run to end (or stop it), or choose another --run-name "
                              f"or --runs-root.") from None
        except OSError as e:  # e.g. Lustre mounted without flock: better unlocked than not at all
            print(f"warning: cannot lock {run_dir / LOCK} ({e.strerror}): nothing keeps a second run from writing "
                  f"into {run_dir}, so give each run its own --run-name", file=sys.stderr)
        f.truncate(0)
        f.write(f"PID {os.getpid()} on {socket.gethostname()} since "
                f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}\n")
        f.flush()
        for tmp in run_dir.glob("*.tmp"):
            tmp.unlink(missing_ok=True)
        yield  # the lock goes with the file's closing, or with the process


def _clear(run_dir):
    """Deletes what run_dir holds, but not its lock, which this process holds."""
    for entry in run_dir.iterdir():
        if entry.name == LOCK:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _damaged(run_dir, problem):
    return RunConflict(f"{problem}, so {run_dir} cannot be continued. Restore the file from a copy, or start the "
                       f"run over with --restart (this deletes what {run_dir} holds), or choose another --run-name.")


def _resume_state(run_dir):
    """The training state in last.pt, after checking that every file a resume needs can be read
    (RunConflict naming the one that cannot), so that nothing fails after training. last.pt is
    written first in each epoch: a checkpoint.pt that missed its last epoch's write (a full
    disk, a kill) is written again from last.pt, which holds that epoch's model."""
    try:
        last = load_torch(run_dir / LAST)
        state, best = last["state"], last["state"]["best_epoch"]
    except (DamagedFile, KeyError, TypeError) as e:
        raise _damaged(run_dir, str(e) if isinstance(e, DamagedFile) else f"{run_dir / LAST} is damaged") from None
    if best is not None and best == state["epoch"]:
        if _checkpoint_epoch(run_dir) != best:
            save_torch({"model": last["model"], "epoch": best}, run_dir / CHECKPOINT)
    elif best is not None:
        try:
            load_torch(run_dir / CHECKPOINT)
        except FileNotFoundError:
            raise _damaged(run_dir, f"{run_dir} has no {CHECKPOINT} (the best epoch's model)") from None
        except DamagedFile as e:
            raise _damaged(run_dir, str(e)) from None
    return state


def _checkpoint_epoch(run_dir):
    """The epoch of run_dir's checkpoint.pt, None when it is missing or damaged."""
    try:
        return load_torch(run_dir / CHECKPOINT)["epoch"]
    except (OSError, DamagedFile, KeyError, TypeError):
        return None


def open_run(run_dir, settings, data, restart=False):
    """Makes run_dir, which the caller holds `locked`, ready for a run of `settings` (what
    defines the run) on `data` (the data's fingerprint). Returns "new", "resume" or
    "finished" (nothing to do).

    A run continues only with the same settings and data; its budget (BUDGET) may be
    raised, which reopens a finished run: test_metrics.json goes, and the run is tested
    again at its new end. A directory where no epoch finished is simply started over; one
    where epochs finished but last.pt is gone is refused. A damaged test_metrics.json is
    made again by testing the run again. Raises RunConflict, before anything is changed,
    when the run cannot continue.
    """
    run_dir = Path(run_dir)
    if restart:
        _clear(run_dir)
    if not (run_dir / LAST).is_file():
        try:
            epochs_run = len(load_metrics(run_dir))
        except DamagedFile as e:
            raise _damaged(run_dir, str(e)) from None
        if not epochs_run:
            return "new"
        there = ", ".join(sorted(p.name for p in run_dir.iterdir() if p.name != LOCK))
        raise RunConflict(f"{run_dir} holds {epochs_run} finished epoch{'s' * (epochs_run > 1)} ({there}) but no "
                          f"{LAST}, so it cannot be resumed, and starting over would overwrite what is there. Restore "
                          f"{LAST}, or --restart to start the run over (this deletes it all), or choose another "
                          f"--run-name.")
    if not (run_dir / CONFIG).is_file():
        raise _damaged(run_dir, f"{run_dir} has no {CONFIG} (the run's settings)")
    try:
        stored = load_json(run_dir / CONFIG)
    except DamagedFile as e:
        raise _damaged(run_dir, str(e)) from None
    differ = {k: (stored.get(k), v) for k, v in settings.items() if k not in BUDGET and stored.get(k) != v}
    if differ:
        raise RunConflict(f"{run_dir} holds a run with other settings "
                          f"({', '.join(f'{k}: {a} there, {b} now' for k, (a, b) in differ.items())}). "
                          f"Only its budget ({', '.join('--' + k.replace('_', '-') for k in BUDGET)}) may change; "
                          f"choose another --run-name or --runs-root, or --restart to replace it.")
    stored_data = (stored.get("data") or {}).get("sha256")
    if stored_data != data["sha256"]:
        raise RunConflict(f"{run_dir} was trained on other data (dataset fingerprint {str(stored_data)[:12]} there, "
                          f"{data['sha256'][:12]} now). Point --data-root at its data, choose another --run-name, "
                          f"or --restart.")
    if is_finished(run_dir):
        try:
            load_json(run_dir / TEST_METRICS)
        except DamagedFile:
            (run_dir / TEST_METRICS).unlink()  # the run is tested again at its end, as it was
    changed = {k: (stored.get(k), settings[k]) for k in BUDGET if stored.get(k) != settings[k]}
    if not changed and is_finished(run_dir):
        return "finished"
    epochs_run = _resume_state(run_dir)["epoch"]
    if not changed:
        return "resume"
    if settings["epochs"] < epochs_run:
        raise RunConflict(f"--epochs {settings['epochs']} is below the {epochs_run} epochs {run_dir} has trained; "
                          f"raise it, or --restart")
    stored.update({k: settings[k] for k in changed})
    stored.setdefault("budget_changes", []).append(
        {"after_epoch": epochs_run, "changed": {k: list(v) for k, v in changed.items()},
         "time": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    save_json(stored, run_dir / CONFIG)
    (run_dir / TEST_METRICS).unlink(missing_ok=True)  # tested again at the new end
    return "resume"


def load_metrics(run_dir):
    """The rows of a run's metrics.csv (strings), [] when it has none."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    try:
        with open(path) as f:
            return list(csv.DictReader(f))
    except (csv.Error, UnicodeDecodeError) as e:
        raise DamagedFile(f"{path} is damaged (truncated or overwritten: {e})") from None

# -----------------------------------------------------------------------------
# names


def variant(config):
    """What tells runs of one model apart in the paper's tables: the readout, CNN depth or
    U-Net width ("linear", "depth 8", "width 4"); `config` is a run's config or a table row."""
    if config["model"] == "cnn":
        return f"depth {int(config['depth'])}"
    if config["model"] == "unet":
        return f"width {int(config['width'])}"
    return config["readout"]


def default_run_name(config):
    """<dataset>/<model>-<variant>[-n<train size>]-seed<seed>, e.g. tetrominoes/nwm-linear-T100-h2-seed0."""
    if config["model"] == "cnn":
        name = f"depth{config['depth']}"
    elif config["model"] == "unet":
        name = f"width{config['width']}"
    else:
        name = f"{config['readout']}-T{config['T']}-h{config['hidden_channels']}"
    name = f"{config['dataset']}/{config['model']}-{name}"
    if config.get("train_size") is not None:
        name += f"-n{config['train_size']}"
    return f"{name}-seed{config['seed']}"

# -----------------------------------------------------------------------------
# finding runs


def find_runs(root):
    """Every run directory (one holding a config.json) under `root`, sorted."""
    return sorted(p.parent for p in Path(root).rglob(CONFIG))


def find_run(runs_root, dataset, model, readout=None, finished=True):
    """The run directory of `model` on `dataset` under `runs_root`, or None.

    Runs are picked by their config.json, not by their name; `readout` narrows recurrent
    models to one readout. Among several, the linear readout (the paper's main one) and
    then the lowest seed come first.
    """
    if not Path(runs_root).is_dir():
        return None
    matches = []
    for run_dir in find_runs(runs_root):
        config = load_json(run_dir / CONFIG)
        if (config.get("dataset") == dataset and config.get("model") == model
                and readout in (None, config.get("readout"))
                and (is_finished(run_dir) or not finished)):
            matches.append((config.get("readout") != "linear", config.get("seed", 0), str(run_dir), run_dir))
    return min(matches)[-1] if matches else None
