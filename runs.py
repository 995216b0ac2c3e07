"""Run directories: what a training run writes, how runs are named, found and loaded.

    <runs root>/<run name>/
        config.json        every resolved setting, num_params, the data's fingerprint, the git
                           commit, library versions, device
        metrics.csv        one row per finished epoch: train and val metrics, lr, seconds (run,
                           not stopped: signals.py) and of them val_seconds, and the device,
                           precision and threads it ran with
        checkpoint.pt      the model with the best validation loss so far
        last.pt            everything needed to resume after the last finished epoch, or from
                           the next batch of an epoch stopped between two (epoch_in_progress)
        test_metrics.json  the best checkpoint's metrics on the test split and why training
                           ended; its presence marks the run as finished
        .lock              who runs it now (PID, host); locked while a run writes here

A run name is a relative path that stays strictly inside the runs root, however it is spelled
(`run_path` refuses the others before any work), and a run writes only into a folder that is
empty or a run directory; --restart deletes only the files listed above, never a link's target.

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
import shutil
import socket
import subprocess
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

import torch

import settings

CONFIG, METRICS, CHECKPOINT, LAST, TEST_METRICS, LOCK = (
    "config.json", "metrics.csv", "checkpoint.pt", "last.pt", "test_metrics.json", ".lock")
RUN_FILES = (CONFIG, METRICS, CHECKPOINT, LAST, TEST_METRICS)  # what a run writes, and all that --restart deletes
# what each file is, for refusing one given where a checkpoint is expected
NOT_CHECKPOINTS = {CONFIG: "the run's settings", METRICS: "the run's per-epoch metrics",
                   TEST_METRICS: "the run's test metrics"}
# What each of train.py's settings is to its run, in one place. Every setting defines the run (it continues only
# with the same values: open_run) except these. BUDGET, how long it trains, may grow when it continues.
# NOT_DEFINING, how and where it computes, may change between invocations: config.json keeps the first
# invocation's values (each invocation's hardware is in its `invocations`), and under the names of OUTCOMES what
# the latest invocation computed with (amp: whether bfloat16; cuda_graph, compile: their outcome; each
# invocation's own are in its record too), and under RESOLVED
# what its machine made of the flag (device: "auto" as cuda or cpu; bptt_segment: "auto" as a length for that
# device's memory): --resume takes neither back as flags. INVOCATION, how one command was invoked, config.json
# does not keep.
BUDGET = ("epochs", "min_epochs", "patience", "max_minutes")
NOT_DEFINING = ("device", "threads", "amp", "bf16_coupling", "bptt_segment", "fused", "compile", "cuda_graph",
                "cpu_allocator", "data_root", "runs_root", "run_name")
OUTCOMES = ("amp", "cuda_graph", "compile")
RESOLVED = ("device", "bptt_segment")
INVOCATION = ("resume", "restart", "quickstart", "stop_after_minutes", "end_by_minutes", "progress")


class RunConflict(Exception):
    """The run directory holds something this run cannot continue; the message says what to do."""


class DamagedFile(ValueError):
    """A run file that exists but cannot be read: truncated, emptied or overwritten."""


class BadRunName(ValueError):
    """A run name (or run directory) that could reach outside the runs root, or that the file system cannot hold."""


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


def _temporary(path):
    return path.with_name(f"{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")  # one per writer


def _save_bytes(data, path):
    path = Path(path)
    tmp = _temporary(path)
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
    """What torch.save wrote to `path`; DamagedFile when the file is not one (damaged, overwritten, or another
    kind of file such as a run's config.json), FileNotFoundError when it is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
    if path.name in NOT_CHECKPOINTS:
        raise DamagedFile(f"{path} is {NOT_CHECKPOINTS[path.name]}, not a checkpoint: pass the run directory or its "
                          f"{CHECKPOINT}")
    try:
        with open(path, "rb") as f:
            start = f.read(4)
    except OSError as e:
        raise DamagedFile(f"{path} cannot be read ({e.strerror})") from None
    if not (start == b"PK\x03\x04" or start[:1] == b"\x80"):  # torch.save's zip archive, or its older pickle
        raise DamagedFile(f"{path} is damaged or not a checkpoint (it was not written by torch.save: overwritten, "
                          f"or another kind of file)")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # a damaged archive fails anywhere in torch's reader (IndexError, KeyError, ...)
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


def slices_ran_on(earlier, hardware):
    """What the slices of one epoch ran on (hardware() of each), in order and without repeats: `earlier`
    (kept in last.pt with an epoch paused between two batches) and this invocation's `hardware`."""
    return list(earlier) if hardware in earlier else [*earlier, hardware]


def epoch_row(epoch, train, val, lr, seconds, improved, hardware=None, val_seconds=None, slices=()):
    """One row of metrics.csv: the epoch's train and val metrics, learning rate, seconds (of which
    `val_seconds` validating), whether it improved, and what it ran on (`hardware`, see hardware(), of
    its last slice; `ran_on` names every slice's where the epoch ran on more than one, see slices_ran_on)."""
    from metrics import METRIC_NAMES  # keeps `import runs` light

    row = {"epoch": epoch}
    for prefix, metrics in (("train", train), ("val", val)):
        row.update({f"{prefix}_{name}": metrics[name] for name in METRIC_NAMES})
    row.update(lr=lr, seconds=round(seconds, 3), best=int(improved))
    if val_seconds is not None:
        row.update(val_seconds=round(val_seconds, 3))
    row.update(hardware or {})
    if len(slices) > 1:
        row.update(ran_on=" | ".join(f"{h['device_name']}, {h['threads']} threads, {h['precision']}" for h in slices))
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


def save_progress(run_dir, state, model, optimizer, generator, epoch_in_progress):
    """Writes last.pt in the middle of an epoch: the training `state` after its last finished epoch,
    with the weights, optimizer and batch-order generator as they are now and `epoch_in_progress`
    (the training pass so far, train.py's), from which a resume goes on. checkpoint.pt and
    metrics.csv are left as the last finished epoch wrote them."""
    save_torch(dict(model=model.state_dict(), optimizer=optimizer.state_dict(), generator=generator.get_state(),
                    state=state, epoch_in_progress=epoch_in_progress), Path(run_dir) / LAST)


def load_progress(run_dir):
    """(the epoch in progress, its number) that last.pt holds (save_progress), or (None, None)."""
    try:
        last = load_torch(Path(run_dir) / LAST)
        return last["epoch_in_progress"], last["state"]["epoch"] + 1
    except (OSError, DamagedFile, KeyError, TypeError):
        return None, None


def epoch_in_progress(run_dir):
    """", and 40 of 156 batches of epoch 2" when last.pt holds an epoch stopped between two batches, else ""."""
    progress, epoch = load_progress(run_dir)
    if progress is None:
        return ""
    training = progress["training"]
    return f", and {training['done']} of {len(training['order']) // training['batch_size']} batches of epoch {epoch}"


def is_finished(run_dir):
    return (Path(run_dir) / TEST_METRICS).is_file()


def load_model(run_dir, device="cpu", which=CHECKPOINT):
    """(model, config) of a run, with the weights of its best checkpoint (or `which`), in eval mode;
    DamagedFile when one of the two files cannot be read."""
    from models import build_model, model_config_keys  # keeps `import runs` light

    run_dir = Path(run_dir)
    config = load_json(run_dir / CONFIG)
    state = load_torch(run_dir / which, device)
    if not isinstance(config, dict) or "model" not in config:
        raise DamagedFile(f"{run_dir / CONFIG} is damaged (it names no model)")
    if not isinstance(state, dict) or "model" not in state:
        raise DamagedFile(f"{run_dir / which} holds no model weights: pass the run directory or its {CHECKPOINT}")
    keys = model_config_keys(config["model"])
    model = build_model(config["model"], **{k: config[k] for k in keys if k in config})
    if not weights_fit(model, state["model"]):
        raise DamagedFile(f"{run_dir / which} holds weights of another model than the one {run_dir / CONFIG} "
                          f"describes (one of the two was edited or copied from another run)")
    model.load_state_dict(state["model"])
    return model.to(device).eval(), config


def weights_fit(model, weights):
    """Whether `weights` (a state_dict) has exactly the names and shapes of `model`'s."""
    own = model.state_dict()
    return (isinstance(weights, dict) and weights.keys() == own.keys()
            and all(torch.is_tensor(weights[k]) and weights[k].shape == v.shape for k, v in own.items()))

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
        for tmp in _own_temporaries(run_dir):
            tmp.unlink(missing_ok=True)
        yield  # the lock goes with the file's closing, or with the process


def _own_temporaries(run_dir):
    """The temporary files a killed writer of run_dir's files left (see _temporary), and no other file."""
    return [p for name in RUN_FILES for p in run_dir.glob(f"{name}.*-*.tmp") if not p.is_dir()]


def _foreign(run_dir):
    """The names in run_dir that no run writes, sorted."""
    own = {*RUN_FILES, LOCK, *(p.name for p in _own_temporaries(run_dir))}
    return sorted(p.name for p in run_dir.iterdir() if p.name not in own)


def is_run_dir(run_dir):
    """Whether run_dir holds a run's files: a metrics.csv, checkpoint, last.pt or test_metrics.json, or the
    config.json of a run (one naming its run and model)."""
    run_dir = Path(run_dir)
    if any((run_dir / name).is_file() for name in RUN_FILES if name != CONFIG):
        return True
    try:
        config = load_json(run_dir / CONFIG)
    except (OSError, DamagedFile):
        return False
    return isinstance(config, dict) and {"run_name", "model"} <= config.keys()


def _clear(run_dir):
    """Deletes the run's files in run_dir (RUN_FILES and their temporaries), never a link's target or anything
    else; returns the names of what it kept (not the lock, which this process holds)."""
    for name in RUN_FILES:
        path = run_dir / name
        if path.is_symlink() or path.is_file():
            path.unlink()
    for tmp in _own_temporaries(run_dir):
        tmp.unlink(missing_ok=True)
    return _foreign(run_dir)


def _damaged(run_dir, problem):
    return RunConflict(f"{problem}, so {run_dir} cannot be continued. Restore the file from a copy, or start the "
                       f"run over with --restart (this deletes what {run_dir} holds), or choose another --run-name.")


def _resume_state(run_dir):
    """The training state in last.pt, after checking that every file a resume needs can be read
    (RunConflict naming the one that cannot), so that nothing fails after training. last.pt is
    written first in each epoch: a checkpoint.pt that missed its last epoch's write (a full
    disk, a kill) is written again from last.pt, which holds that epoch's model (unless it holds
    an epoch in progress: refused), and so is a metrics.csv behind last.pt's history."""
    try:
        last = load_torch(run_dir / LAST)
        state, best = last["state"], last["state"]["best_epoch"]
    except (DamagedFile, KeyError, TypeError) as e:
        raise _damaged(run_dir, str(e) if isinstance(e, DamagedFile) else f"{run_dir / LAST} is damaged") from None
    try:
        behind = len(load_metrics(run_dir)) < len(state["history"])  # a kill between last.pt and metrics.csv
    except DamagedFile:
        behind = True
    if behind:
        save_metrics(state["history"], run_dir / METRICS)
    if best is not None and best == state["epoch"]:
        if _checkpoint_epoch(run_dir) != best:
            if "epoch_in_progress" in last:  # its weights are no epoch's end
                raise _damaged(run_dir, f"{run_dir} has no {CHECKPOINT} of its best epoch ({best})")
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


def run_defining(settings):
    """Of train.py's settings, those that define the run, with its budget: what open_run compares with the
    stored ones."""
    return {k: v for k, v in settings.items() if k not in NOT_DEFINING and k not in INVOCATION}


def open_run(run_dir, settings, data, restart=False):
    """Makes run_dir, which the caller holds `locked`, ready for a run of `settings` (run_defining's: what
    defines the run, and its budget) on `data` (the data's fingerprint). Returns (status, budget change):
    status "new", "resume" or "finished" (nothing to do), and the change of budget that write_config records,
    or None.

    A run continues only with the same settings and data; its budget (BUDGET) may be
    raised, which reopens a finished run: it is tested again at its new end (train.fit removes its
    test_metrics.json once the run starts, so that a refusal before then leaves it). A directory where
    no epoch finished nor any batch was kept (last.pt) is simply started over, unless it holds a trained
    run's checkpoint.pt or test_metrics.json; one where epochs finished but last.pt is gone is refused, unless
    the run is finished and asked for nothing more (a shipped run keeps no last.pt). A damaged test_metrics.json is
    made again by testing the run again. Raises RunConflict, before anything is changed,
    when the run cannot continue.
    """
    run_dir = Path(run_dir)
    if restart:
        kept = _clear(run_dir)
        if kept:
            print(f"--restart deleted the run's files in {run_dir} and kept what no run writes: {', '.join(kept)}")
    if not (run_dir / LAST).is_file():
        try:
            epochs_run = len(load_metrics(run_dir))
        except DamagedFile as e:
            raise _damaged(run_dir, str(e)) from None
        trained = [name for name in (CHECKPOINT, TEST_METRICS) if (run_dir / name).is_file()]
        if not epochs_run and trained:  # a trained run's metrics.csv lost: starting over would overwrite the rest
            raise RunConflict(f"{run_dir} holds {' and '.join(trained)} of a trained run but neither {METRICS} nor "
                              f"{LAST}, so it can neither be resumed nor told finished. Restore {METRICS}, or "
                              f"--restart to start the run over (this deletes it all), or choose another --run-name.")
        if not epochs_run:
            return "new", None
        if not is_finished(run_dir):  # a finished one (a shipped run keeps no last.pt) is checked below
            there = ", ".join(sorted(p.name for p in run_dir.iterdir() if p.name != LOCK))
            raise RunConflict(f"{run_dir} holds {epochs_run} finished epoch{'s' * (epochs_run > 1)} ({there}) but no "
                              f"{LAST}, so it cannot be resumed, and starting over would overwrite what is there. "
                              f"Restore {LAST}, or --restart to start the run over (this deletes it all), or choose "
                              f"another --run-name.")
    if not (run_dir / CONFIG).is_file():
        raise _damaged(run_dir, f"{run_dir} has no {CONFIG} (the run's settings)")
    try:
        stored = load_json(run_dir / CONFIG)
    except DamagedFile as e:
        raise _damaged(run_dir, str(e)) from None
    if not isinstance(stored, dict):
        raise _damaged(run_dir, f"{run_dir / CONFIG} is damaged (it holds no settings)")
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
    finished = is_finished(run_dir)
    if finished:
        try:
            load_json(run_dir / TEST_METRICS)
        except DamagedFile:
            finished = False  # the run is tested again at its end, as it was (train.fit removes the damaged file)
    changed = {k: (stored.get(k), settings[k]) for k in BUDGET if stored.get(k) != settings[k]}
    if not changed and finished:
        return "finished", None
    if not (run_dir / LAST).is_file():
        raise RunConflict(f"{run_dir} is a finished run without {LAST}, its training state (a shipped run is kept "
                          f"without it), so it cannot train further or be tested again: restore {LAST} from where "
                          f"the run was trained, or train a new run under another --run-name.")
    epochs_run = _resume_state(run_dir)["epoch"]
    if not changed:
        return "resume", None
    if settings["epochs"] < epochs_run:
        raise RunConflict(f"--epochs {settings['epochs']} is below the {epochs_run} epochs {run_dir} has trained; "
                          f"raise it, or --restart")
    return "resume", {"after_epoch": epochs_run, "changed": {k: list(v) for k, v in changed.items()},
                      "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def last_arithmetic(run_dir):
    """The --amp and --bf16-coupling values ("on" or "off") that go on as a run's last epoch ran: its precision
    (metrics.csv's last row, or last.pt's where metrics.csv is damaged) and the coupling of its last invocation
    (config.json), or those of the epoch in progress that last.pt holds; {} before its first epoch."""
    progress, _ = load_progress(run_dir)
    if progress is not None and "precision" in progress:
        return {"amp": "on" if progress["precision"] == precision(True) else "off",
                "bf16_coupling": "on" if progress["bf16_coupling"] else "off"}
    try:
        rows = load_metrics(run_dir)
    except DamagedFile:  # open_run writes it again from last.pt, whose state holds the same rows
        if not (Path(run_dir) / LAST).is_file():
            raise
        rows = load_torch(Path(run_dir) / LAST)["state"]["history"]
    if not rows:
        return {}
    invocations = load_json(Path(run_dir) / CONFIG).get("invocations") or [{}]
    last = {"bf16_coupling": "on" if invocations[-1].get("bf16_coupling") else "off"}
    if rows[-1].get("precision"):  # recorded since November 2026
        last["amp"] = "on" if rows[-1]["precision"] == precision(True) else "off"
    return last


def check_arithmetic(run_dir, amp_now, bf16_coupling_now, named):
    """Refuses (RunConflict) to resume a run in other arithmetic than its last epoch's (last_arithmetic), unless
    the command `named` the flag (the train.py settings it gives itself): --amp auto resolves per machine, and
    --bf16-coupling's default may differ from what the last slice was given."""
    last = last_arithmetic(run_dir)
    if "amp" in last and (last["amp"] == "on") != amp_now and "amp" not in named:
        raise RunConflict(f"{run_dir}'s last epoch ran in {precision(not amp_now)}, and --amp auto means "
                          f"{precision(amp_now)} here: resume it where {precision(not amp_now)} runs, or name the "
                          f"precision it goes on in, --amp on or --amp off (metrics.csv records each epoch's)")
    coupling_changed = "bf16_coupling" in last and (last["bf16_coupling"] == "on") != bf16_coupling_now
    if coupling_changed and "bf16_coupling" not in named:
        raise RunConflict(f"{run_dir}'s last slice ran with --bf16-coupling {last['bf16_coupling']}, and this "
                          f"command leaves it {'on' if bf16_coupling_now else 'off'}: name it (--bf16-coupling on or "
                          f"off) to go on either way (config.json's invocations record each slice's)")


def write_config(run_dir, invocation, computed, first=None, budget_change=None):
    """config.json, its one writer, once per invocation before its first epoch. A new run's is `first` (the
    settings, less INVOCATION's, and what the run was built from and on), with what its first `invocation`
    says of where it started (git commit, device, command, time); a continued run's is the stored one, with
    open_run's `budget_change` applied and noted in budget_changes. `computed` (how this invocation
    computes: the precision and the outcomes of OUTCOMES) goes into the top level, which so says how the
    latest invocation computed, and into its record, appended to `invocations`, which keeps every one's."""
    path = Path(run_dir) / CONFIG
    invocation = dict(invocation, **computed)
    if first is not None:
        config = {k: v for k, v in first.items() if k not in INVOCATION}
        config.update(computed)
        config.update({key: invocation[key] for key in ("git", "device_name", "command", "started")})
    else:
        config = dict(load_json(path), **computed)
    if budget_change:
        config.update({k: new for k, (_, new) in budget_change["changed"].items()})
        config.setdefault("budget_changes", []).append(budget_change)
    config["invocations"] = config.get("invocations", []) + [invocation]
    save_json(config, path)


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


# A run's identity among the runs of its dataset and model, derived from the build_model keywords its model
# takes (models.model_config_keys) and written once here: its variant in the paper's tables (variant), its
# name (default_run_name) and its model's columns in scores.csv (model_columns).
#   variant: the setting the paper's grid varies, the first of VARIANT_KEYS the model takes: a recurrence's
#            readout ("linear"), the CNN's depth ("depth 8"), the U-Net's width ("width 4");
#   name:    the variant, and a recurrence's steps and hidden channels: nwm-linear-T100-h2, cnn-depth8, unet-width4;
#   columns: MODEL_COLUMNS, each empty for a model that does not take it. T is a recurrence's steps; the
#            CNN's keyword T (the flag and config.json keep its name) sets its features per channel, T/2 - 1
#            (models/cnn.py), which is its column features_per_channel.
VARIANT_KEYS = ("readout", "depth", "width")
MODEL_COLUMNS = ("readout", "T", "features_per_channel", "depth", "width", "hidden_channels")


def _model(name):
    """(the build_model keywords of model `name`, whether it is a recurrence); a model this code does not know
    (a run of a model since removed) is taken as a recurrence."""
    from models import MODEL_NAMES, is_recurrent, model_config_keys  # keeps `import runs` light

    if name not in MODEL_NAMES:
        return ("readout", "T", "hidden_channels"), True
    return model_config_keys(name), is_recurrent(name)


def _variant(config):
    """(setting, value) of the run's variant, (None, None) for a model that takes none of VARIANT_KEYS."""
    keys, _ = _model(config["model"])
    key = next((k for k in VARIANT_KEYS if k in keys), None)
    return key, config.get(key)


def variant(config):
    """What tells runs of one model apart in the paper's tables: the readout, CNN depth or U-Net width
    ("linear", "depth 8", "width 4"); `config` is a run's config or a row of scores.csv."""
    key, value = _variant(config)
    return "" if key is None else str(value) if key == "readout" else f"{key} {int(value)}"


def steps(config):
    """A recurrence's steps as the score tables show them after its variant (", T 100"); "" for other models
    and where T is missing (None)."""
    return f", T {int(config['T'])}" if _model(config["model"])[1] and config.get("T") is not None else ""


def model_columns(config):
    """The MODEL_COLUMNS of a run's config, as scores.csv holds them: None where its model lacks the setting."""
    from models.cnn import features_per_channel

    keys, recurrent = _model(config["model"])
    row = {column: config.get(column) if column in keys else None for column in MODEL_COLUMNS}
    if "T" in keys and not recurrent and config.get("T") is not None:  # the CNN's T: no steps, features
        row["T"], row["features_per_channel"] = None, features_per_channel(config["T"])
    return row


def data_label(config):
    """Which data a run was trained on, in words (scores.csv's `data` column)."""
    data = config.get("data")
    if not data:
        return "unrecorded"
    if data.get("label"):
        return data["label"]
    if data["paper_identical"]:
        return "paper"
    from dataset_config import BUILT_IN  # keeps `import runs` light: no data root scanned on import

    if config["dataset"] not in BUILT_IN:  # a folder of the user's, by data_scripts/import_folder.py
        return f"imported, sha256 {data['sha256'][:12]}"
    origin = "our recipe" if data["paper_identical"] is None else "paper's recipe"
    return f"{origin}, seed {data['seed']}, sha256 {data['sha256'][:12]}"


def _limit(folder, name, default):
    """The file system's limit `name` ("PC_NAME_MAX", "PC_PATH_MAX") at `folder`'s nearest existing folder."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return os.pathconf(folder, name)
    except (OSError, ValueError):
        return default


def run_path(runs_root, run_name):
    """runs_root / run_name, after checking that the name is a relative path that stays strictly inside the
    runs root however it is spelled (no "..", no absolute path, no link out of the root, not the root itself),
    that the file system can hold it, and that an existing folder there is a run directory; BadRunName, saying
    what to do, otherwise. Trailing slashes and "." parts are dropped: "a/./b/" is "a/b"."""
    runs_root, text = Path(runs_root), str(run_name)
    what = f"--run-name {text!r}"
    if any(ord(c) < 32 for c in text):
        raise BadRunName(f"{what} holds a control character; use letters, digits, '-', '_', '.' and '/'")
    name = PurePosixPath(text)
    if name.is_absolute() or ".." in name.parts or not name.parts:
        raise BadRunName(f"{what}: a run name is a relative path inside the runs root (e.g. tetrominoes/nwm-seed0),"
                         f" not empty, '.', absolute or with '..'; to put runs elsewhere use --runs-root")
    if runs_root.exists() and not runs_root.is_dir():
        raise BadRunName(f"--runs-root {runs_root} is a file, not a folder; name a folder for the runs")
    run_dir = runs_root.joinpath(*name.parts)
    name_max, path_max = _limit(runs_root, "PC_NAME_MAX", 255), _limit(runs_root, "PC_PATH_MAX", 4096)
    for part in run_dir.absolute().parts:
        if len(os.fsencode(part)) > name_max:
            flag = "--run-name" if part in name.parts else "--runs-root"
            raise BadRunName(f"{flag}: the folder name {part[:40]}... is {len(os.fsencode(part))} bytes long, and "
                             f"this file system allows {name_max}; use a shorter name")
    longest = max(len(os.fsencode(_temporary(run_dir / name).name)) for name in RUN_FILES)  # what a run writes
    if len(os.fsencode(run_dir.absolute())) + 1 + longest > path_max:
        raise BadRunName(f"{what}: the run's files would have paths longer than the {path_max} bytes this file "
                         f"system allows; use a shorter --run-name or --runs-root")
    try:
        root, resolved = runs_root.resolve(), run_dir.resolve()
    except (OSError, RuntimeError) as e:  # a loop of links
        raise BadRunName(f"{what}: {run_dir} cannot be resolved ({e}); choose another --run-name") from None
    if resolved == root:
        raise BadRunName(f"{what}: {run_dir} is the runs root itself (through a link); choose another --run-name")
    if root not in resolved.parents:
        raise BadRunName(f"{what}: {run_dir} leads to {resolved}, outside the runs root {root} (through a link); "
                         f"choose another --run-name")
    if run_dir.exists() and not run_dir.is_dir():
        raise BadRunName(f"{what}: {run_dir} is a file, not a folder; choose another --run-name")
    if run_dir.is_dir() and _foreign(run_dir) and not is_run_dir(run_dir):
        shown = ", ".join(_foreign(run_dir)[:5]) + (", ..." if len(_foreign(run_dir)) > 5 else "")
        raise BadRunName(f"{what}: {run_dir} holds files no run wrote ({shown}), so it is not a run directory and a "
                         f"run neither writes into it nor deletes it (--restart); choose another --run-name")
    return run_dir


def default_run_name(config):
    """<dataset>/<model>-<variant>[-n<train size>]-seed<seed>, the variant as names spell it (see VARIANT_KEYS),
    e.g. tetrominoes/nwm-linear-T100-h2-seed0, tetrominoes/cnn-depth8-seed0."""
    key, value = _variant(config)
    parts = [config["model"]] + ([] if key is None else [str(value) if key == "readout" else f"{key}{value}"])
    if _model(config["model"])[1]:
        parts += [f"T{config['T']}", f"h{config['hidden_channels']}"]
    if config.get("train_size") is not None:
        parts.append(f"n{config['train_size']}")
    return f"{config['dataset']}/{'-'.join(parts)}-seed{config['seed']}"

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
