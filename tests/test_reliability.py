"""Faults a run directory, the data and the tools must survive (docs/reliability.md): two writers on one
run, damaged and missing run files, write errors, a signal during the test, tampered arrays, bad numbers."""
import errno
import os
import signal
import subprocess
import time

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import predict
import produce_scores
import runs
import train
from conftest import REPO, metrics_rows, train_command


def refused(capsys, run_train, runs_root, *extra, code=2):
    """The stderr of run_train(runs_root, *extra) (run "r"), which must end with `code` (2: refused by
    argparse) and no traceback."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_train(runs_root, "--run-name", "r", *extra)
    assert exit_info.value.code == code
    return capsys.readouterr().err


def no_training(*args, **kwargs):
    raise AssertionError("an epoch started although the run should have been refused before training")


RUN = ("--epochs", "4", "--tolerance", "100")  # only epoch 1 improves, so checkpoint.pt stays behind last.pt


@pytest.fixture
def paused_run(run_train, tmp_path):
    """A run of RUN paused after epoch 2, its best epoch 1: config.json, metrics.csv, checkpoint.pt, last.pt."""
    for _ in range(2):
        run_train(tmp_path, "--run-name", "r", *RUN, "--stop-after-minutes", "1e-9")  # one epoch per invocation
    return tmp_path / "r"

# -----------------------------------------------------------------------------
# two writers on one run directory


@pytest.mark.slow
def test_a_second_training_on_a_run_directory_is_refused_and_a_killed_runs_lock_does_not_block(
        small_tetrominoes, tmp_path):
    command = train_command(small_tetrominoes, tmp_path, "--no-progress")
    first = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while len(runs.load_metrics(tmp_path / "r")) < 1 and time.time() < deadline:  # inside the epoch loop
            time.sleep(0.05)
        assert first.poll() is None
        one_epoch = ["--stop-after-minutes", "1e-9"]  # would resume alongside the first and end, if let in
        second = subprocess.run(command + one_epoch, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2 and "Traceback" not in second.stderr
        assert f"in use by PID {first.pid} on {os.uname().nodename}" in second.stderr
    finally:
        first.kill()  # SIGKILL: no handler runs, the lock file stays behind
        first.wait()
    done = len(runs.load_metrics(tmp_path / "r"))
    third = subprocess.run(command + ["--stop-after-minutes", "1e-9"], cwd=REPO, capture_output=True, text=True,
                           timeout=120)
    assert third.returncode == 0, third.stderr
    assert f"resuming {tmp_path / 'r'} after epoch" in third.stdout
    assert len(runs.load_metrics(tmp_path / "r")) >= done + 1
    assert not list((tmp_path / "r").glob("*.tmp"))


def test_a_file_system_without_locks_runs_unlocked_with_a_warning(run_train, tmp_path, capsys, monkeypatch):
    def no_locks(*args):
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))

    monkeypatch.setattr(runs.fcntl, "flock", no_locks)
    assert run_train(tmp_path, "--run-name", "r", "--epochs", "1")["epochs_run"] == 1
    assert f"warning: cannot lock {tmp_path / 'r' / runs.LOCK}" in capsys.readouterr().err


def test_two_writers_of_one_file_do_not_share_a_temporary_file(tmp_path, monkeypatch):
    path, real_replace, interleaved = tmp_path / "metrics.csv", os.replace, []

    def another_writer_first(src, dst):  # a second writer saves the same file between our write and rename
        if not interleaved:
            interleaved.append(1)
            runs.save_text("theirs\n", path)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", another_writer_first)
    runs.save_text("ours\n", path)
    assert interleaved and path.read_text() == "ours\n"
    assert not list(tmp_path.glob("*.tmp"))

# -----------------------------------------------------------------------------
# run names: nothing outside the run directory is ever touched


def snapshot(folder):
    """Every path under `folder` with what it holds (bytes, a link's target, None for a folder)."""
    return {str(p.relative_to(folder)): os.readlink(p) if p.is_symlink() else p.read_bytes() if p.is_file() else None
            for p in sorted(folder.rglob("*"))}


@pytest.fixture
def runs_root_among_files(tmp_path):
    """tmp_path/project holding a source file and the runs root `runs`, which holds a run directory (other),
    a file, a folder no run wrote (foreign) and links out of the root (out) and to the root itself (itself)."""
    project = tmp_path / "project"
    root = project / "runs"
    (root / "other").mkdir(parents=True)
    (root / "other" / runs.CONFIG).write_text('{"run_name": "other", "model": "nwm"}')
    (root / "other" / runs.METRICS).write_text("epoch\n1\n")
    (root / "notes.txt").write_text("mine")
    (root / "foreign").mkdir()
    (root / "foreign" / "thesis.tex").write_text("mine too")
    (project / "source.py").write_text("print('mine')")
    (root / "out").symlink_to(project)
    (root / "itself").symlink_to(".")
    return root


@pytest.mark.parametrize("name", [
    ".", "./", "", "..", "../", "a/../..", "a/../../runs", "other/../..", "out", "out/x", "itself", "itself/",
    "foreign", "notes.txt", "x" * 300, "a" * 200 + "/b" * 2000, "a\nb"])
@pytest.mark.parametrize("restart", [[], ["--restart"]])
def test_a_run_name_that_could_reach_outside_the_runs_root_is_refused_before_any_work(
        runs_root_among_files, run_train, tmp_path, capsys, monkeypatch, name, restart):
    before = snapshot(tmp_path)
    monkeypatch.setattr(train, "load_dataset", no_training)
    err = refused(capsys, run_train, runs_root_among_files, "--epochs", "1", "--run-name", name, *restart)
    assert "--run-name" in err and "Traceback" not in err and "usage:" not in err
    assert snapshot(tmp_path) == before


def test_an_absolute_run_name_or_an_empty_runs_root_is_refused(runs_root_among_files, run_train, tmp_path, capsys,
                                                                monkeypatch):
    before = snapshot(tmp_path)
    monkeypatch.setattr(train, "load_dataset", no_training)
    err = refused(capsys, run_train, runs_root_among_files, "--run-name", str(tmp_path / "project"), "--restart")
    assert "a relative path inside the runs root" in err
    err = refused(capsys, run_train, "", "--restart")
    assert "--runs-root is empty" in err
    assert snapshot(tmp_path) == before


def test_restart_deletes_only_the_runs_files_and_follows_no_link(run_train, tmp_path, capsys):
    run_train(tmp_path / "runs", "--run-name", "r", "--epochs", "1")
    run_dir = tmp_path / "runs" / "r"
    (run_dir / "notes.txt").write_text("mine")
    (run_dir / "nested" / "run").mkdir(parents=True)
    (run_dir / "nested" / "run" / runs.CONFIG).write_text("{}")
    outside = tmp_path / "elsewhere.pt"
    (run_dir / runs.LAST).rename(outside)
    (run_dir / runs.LAST).symlink_to(outside)
    (run_dir / runs.METRICS).rename(tmp_path / "m.csv")
    (run_dir / runs.METRICS).symlink_to(tmp_path / "m.csv")  # a link a restart deletes, not what it names
    kept = {p: p.read_bytes() for p in (outside, tmp_path / "m.csv", run_dir / "notes.txt",
                                        run_dir / "nested" / "run" / runs.CONFIG)}
    capsys.readouterr()
    assert run_train(tmp_path / "runs", "--run-name", "r", "--epochs", "1", "--restart")["epochs_run"] == 1
    assert {p: p.read_bytes() for p in kept} == kept
    assert not (run_dir / runs.LAST).is_symlink() and len(runs.load_metrics(run_dir)) == 1
    assert "kept what no run writes: nested, notes.txt" in capsys.readouterr().out


def test_a_moved_run_resumes_where_it_is(run_train, tmp_path, capsys):
    run_train(tmp_path / "a", "--run-name", "x/y", "--epochs", "2", "--stop-after-minutes", "1e-9")
    moved = tmp_path / "b" / "moved"
    moved.parent.mkdir()
    (tmp_path / "a" / "x" / "y").rename(moved)
    capsys.readouterr()
    result = train.main(["--resume", str(moved), "--device", "cpu", "--no-progress"])
    assert result["epochs_run"] == 2 and len(runs.load_metrics(moved)) == 2
    # in the precision of its first epoch (--amp off), not what --amp auto would be on this machine
    assert [row["precision"] for row in runs.load_metrics(moved)] == ["float32", "float32"]
    assert f"resuming {moved} after epoch 1" in capsys.readouterr().out
    assert list((tmp_path / "a").rglob("*")) == [tmp_path / "a" / "x"]  # nothing new where it was
    assert list((tmp_path / "b").iterdir()) == [moved]
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--resume", str(moved), "--run-name", "z", "--no-progress"])
    assert exit_info.value.code == 2 and "leave out --run-name" in capsys.readouterr().err


@pytest.mark.parametrize("edit", [{"model": "lstm"}, {"c_mid": 4}])
def test_a_config_edited_to_another_model_is_refused_on_resume(paused_run, tmp_path, capsys, monkeypatch, edit):
    config = runs.load_json(paused_run / runs.CONFIG)
    runs.save_json(dict(config, **edit), paused_run / runs.CONFIG)
    before = snapshot(paused_run)
    monkeypatch.setattr(train, "train_one_epoch", no_training)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--resume", str(paused_run), "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert f"{paused_run / runs.LAST} holds another model than the one the run's settings build" in err
    assert "--restart" in err and snapshot(paused_run) == {**before, ".lock": snapshot(paused_run)[".lock"]}

# -----------------------------------------------------------------------------
# damaged and missing run files


def truncate(path):
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


@pytest.mark.slow
@pytest.mark.parametrize("name, damage, says", [
    ("last.pt", truncate, "last.pt is damaged"),
    ("config.json", truncate, "config.json is damaged"),
    ("config.json", lambda path: path.write_text("[]"), "config.json is damaged"),
    ("checkpoint.pt", truncate, "checkpoint.pt is damaged"),
    ("checkpoint.pt", lambda path: path.unlink(), "no checkpoint.pt"),
])
def test_a_damaged_or_missing_resume_file_is_named_before_training(paused_run, run_train, tmp_path, capsys,
                                                                    monkeypatch, name, damage, says):
    damage(paused_run / name)
    before = (paused_run / runs.METRICS).read_text()
    monkeypatch.setattr(train, "train_one_epoch", no_training)
    err = refused(capsys, run_train, tmp_path, *RUN)
    assert says in err and "--restart" in err and "Traceback" not in err
    assert (paused_run / runs.METRICS).read_text() == before
    if name == "config.json":
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            train.main(["--resume", str(paused_run), "--device", "cpu"])
        assert exit_info.value.code == 2 and says in capsys.readouterr().err


@pytest.mark.parametrize("damage", [truncate, lambda path: path.unlink()])
def test_a_checkpoint_behind_last_pt_is_written_again_from_it(run_train, tmp_path, damage):
    reference = run_train(tmp_path / "whole", "--run-name", "r", *RUN)
    cut = (tmp_path / "cut", "--run-name", "r", *RUN)
    run_train(*cut, "--stop-after-minutes", "1e-9")  # epoch 1: the best, in last.pt
    damage(tmp_path / "cut" / "r" / runs.CHECKPOINT)  # as if the run had stopped before writing it
    assert run_train(*cut) == reference


def test_an_epoch_in_progress_does_not_stand_in_for_a_missing_checkpoint(run_train, tmp_path, capsys, monkeypatch):
    for _ in range(3):  # a batch each: the third ends epoch 1 (the best) and starts epoch 2, kept in last.pt
        run_train(tmp_path, "--run-name", "r", *RUN, "--end-by-minutes", "1e-6")
    assert runs.load_torch(tmp_path / "r" / runs.LAST)["epoch_in_progress"]["training"]["done"] == 1
    (tmp_path / "r" / runs.CHECKPOINT).unlink()  # last.pt's weights are epoch 2's so far, not epoch 1's
    monkeypatch.setattr(train, "train_one_epoch", no_training)
    err = refused(capsys, run_train, tmp_path, *RUN)
    assert "has no checkpoint.pt of its best epoch (1)" in err and "--restart" in err
    assert not (tmp_path / "r" / runs.CHECKPOINT).exists()


@pytest.mark.parametrize("poisoned, says", [("loss", "the training loss became nan"),
                                             ("weights", "the weights or the optimizer's state became non-finite")])
def test_a_non_finite_loss_or_weight_in_an_unfinished_epoch_is_not_kept(tmp_path, poisoned, says):
    from types import SimpleNamespace
    from engine import NonFiniteLossError, TrainingPass
    training = TrainingPass(torch.arange(8), 4, 3, "cpu")
    training.done, training.loss_sum = 1, torch.tensor(float("nan") if poisoned == "loss" else 1.0)
    run = SimpleNamespace(dir=tmp_path, state=train.new_state(), args=SimpleNamespace(bf16_coupling="off"))
    model = torch.nn.Linear(2, 2)
    if poisoned == "weights":  # the last batch's step overflowed after its finite loss
        with torch.no_grad():
            model.weight[0, 0] = float("inf")
    with pytest.raises(NonFiniteLossError, match=says):
        train.keep_progress(run, model, torch.optim.Adam(model.parameters()), torch.Generator(), training, 1.0, 0,
                            runs.hardware("cpu", amp=False))
    assert not (tmp_path / runs.LAST).exists()


def test_an_epoch_in_progress_keeps_its_arithmetic_for_the_resume(run_train, tmp_path):
    run_train(tmp_path, "--run-name", "r", *RUN, "--end-by-minutes", "1e-6")  # one batch of epoch 1, kept
    assert runs.load_metrics(tmp_path / "r") == []  # no finished epoch to read the precision from
    assert runs.last_arithmetic(tmp_path / "r") == {"amp": "off", "bf16_coupling": "off"}


def test_an_epoch_resumed_on_another_machine_names_what_each_slice_ran_on(run_train, tmp_path, monkeypatch):
    run_train(tmp_path, "--run-name", "r", *RUN, "--end-by-minutes", "1e-6")  # one batch of epoch 1, kept
    here = runs.hardware("cpu", amp=False)
    monkeypatch.setattr(runs, "hardware", lambda device, amp: dict(here, device_name="Another CPU", threads=7))
    run_train(tmp_path, "--run-name", "r", *RUN)
    first, *later = runs.load_metrics(tmp_path / "r")
    assert first["device_name"] == "Another CPU"  # the last slice's, as in every row
    assert first["ran_on"] == f"{here['device_name']}, {here['threads']} threads, float32 | Another CPU, 7 threads, float32"
    assert later and all(not row.get("ran_on") for row in later)  # epochs that ran in one slice


def test_a_metrics_file_behind_last_pt_is_written_again_from_it(run_train, tmp_path):
    reference = run_train(tmp_path / "whole", "--run-name", "r", *RUN)
    cut = (tmp_path / "cut", "--run-name", "r", *RUN)
    for _ in range(2):
        run_train(*cut, "--stop-after-minutes", "1e-9")
    metrics = tmp_path / "cut" / "r" / runs.METRICS
    metrics.write_text("".join(metrics.read_text().splitlines(keepends=True)[:-1]))  # killed before epoch 2's row
    run_train(*cut, "--end-by-minutes", "1e-6")  # resumed: one batch of epoch 3, kept in last.pt
    assert len(runs.load_metrics(tmp_path / "cut" / "r")) == 2
    assert run_train(*cut) == reference
    assert metrics_rows(tmp_path / "cut" / "r") == metrics_rows(tmp_path / "whole" / "r")


def test_an_extension_refused_after_the_run_is_opened_leaves_the_finished_run_as_it_was(run_train, tmp_path,
                                                                                         monkeypatch):
    run_train(tmp_path, "--run-name", "r", "--epochs", "1")
    tested = (tmp_path / "r" / runs.TEST_METRICS).read_bytes()

    def refuse(*a, **k):  # as check_arithmetic refuses an extension in another precision
        raise runs.RunConflict("refused")

    check_arithmetic = runs.check_arithmetic
    monkeypatch.setattr(runs, "check_arithmetic", refuse)
    with pytest.raises(SystemExit):
        run_train(tmp_path, "--run-name", "r", "--epochs", "2")
    assert (tmp_path / "r" / runs.TEST_METRICS).read_bytes() == tested  # still finished, its test kept
    monkeypatch.setattr(runs, "check_arithmetic", check_arithmetic)
    assert run_train(tmp_path, "--run-name", "r", "--epochs", "2")["epochs_run"] == 2


def test_a_trained_run_without_its_metrics_and_last_pt_is_refused_not_started_over(run_train, tmp_path, capsys):
    run_train(tmp_path, "--run-name", "r", "--epochs", "1")
    (tmp_path / "r" / runs.METRICS).unlink()
    (tmp_path / "r" / runs.LAST).unlink()
    kept = {name: (tmp_path / "r" / name).read_bytes() for name in (runs.CHECKPOINT, runs.TEST_METRICS)}
    with pytest.raises(SystemExit):
        run_train(tmp_path, "--run-name", "r", "--epochs", "1")
    assert "holds checkpoint.pt and test_metrics.json of a trained run" in capsys.readouterr().err
    assert {name: (tmp_path / "r" / name).read_bytes() for name in kept} == kept


def test_a_damaged_test_metrics_file_is_made_again(run_train, tmp_path):
    finished = run_train(tmp_path, "--run-name", "r", "--epochs", "1")
    truncate(tmp_path / "r" / runs.TEST_METRICS)
    damaged = (tmp_path / "r" / runs.TEST_METRICS).read_bytes()
    last = (tmp_path / "r" / runs.LAST).read_bytes()
    (tmp_path / "r" / runs.LAST).unlink()  # a refusal (no training state) changes nothing, the damaged file neither
    with pytest.raises(SystemExit):
        run_train(tmp_path, "--run-name", "r", "--epochs", "1")
    assert (tmp_path / "r" / runs.TEST_METRICS).read_bytes() == damaged
    (tmp_path / "r" / runs.LAST).write_bytes(last)
    assert run_train(tmp_path, "--run-name", "r", "--epochs", "1") == finished


@pytest.mark.parametrize("change", [[], ["--lr", "0.01"]])
def test_finished_epochs_without_last_pt_are_not_overwritten_unless_restart(paused_run, run_train, tmp_path,
                                                                            capsys, monkeypatch, change):
    (paused_run / runs.LAST).unlink()
    before = {name: (paused_run / name).read_bytes() for name in (runs.CONFIG, runs.METRICS, runs.CHECKPOINT)}
    real_epoch = train.train_one_epoch
    monkeypatch.setattr(train, "train_one_epoch", no_training)
    err = refused(capsys, run_train, tmp_path, *RUN, *change)
    assert "2 finished epochs (checkpoint.pt, config.json, metrics.csv)" in err and "no last.pt" in err
    assert "--restart" in err and {name: (paused_run / name).read_bytes() for name in before} == before
    monkeypatch.setattr(train, "train_one_epoch", real_epoch)
    assert run_train(tmp_path, "--run-name", "r", *RUN, "--restart", *change)["epochs_run"] == 4

def test_a_finished_run_without_last_pt_is_finished_and_not_extended(run_train, tmp_path, capsys):
    finished = run_train(tmp_path, "--run-name", "r", "--epochs", "2")
    (tmp_path / "r" / runs.LAST).unlink()  # as a shipped run is kept
    assert run_train(tmp_path, "--run-name", "r", "--epochs", "2") == finished
    assert "is already finished" in capsys.readouterr().out
    files = lambda: {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir() if p.name != runs.LOCK}  # noqa: E731
    before = files()  # the lock file names each invocation that holds it, with the second it began: not compared
    err = refused(capsys, run_train, tmp_path, "--epochs", "3")
    assert "is a finished run without last.pt" in err and "--restart" not in err
    assert files() == before

# -----------------------------------------------------------------------------
# write errors: a full disk, a read-only runs root


@pytest.mark.parametrize("name", [runs.LAST, runs.CHECKPOINT, runs.METRICS])
def test_a_full_disk_stops_the_run_keeping_the_last_good_files(run_train, tmp_path, capsys, monkeypatch, name):
    reference = run_train(tmp_path / "whole", "--run-name", "r", "--epochs", "3")
    real_write, writes = runs._write_bytes, []

    def disk_full_at_the_second_write_of_name(path, data):
        writes.append(path.name)
        if path.name.startswith(name) and sum(w.startswith(name) for w in writes) == 2:  # in epoch 2
            real_write(path, data[:len(data) // 2])  # half written, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write(path, data)

    monkeypatch.setattr(runs, "_write_bytes", disk_full_at_the_second_write_of_name)
    err = refused(capsys, run_train, tmp_path / "full", "--epochs", "3", code=1)
    run_dir = tmp_path / "full" / "r"
    assert f"cannot write {run_dir / name}" in err and "No space left on device" in err and "MiB free" in err
    assert "Traceback" not in err and not list(run_dir.glob("*.tmp"))
    assert len(runs.load_metrics(run_dir)) == 1
    monkeypatch.setattr(runs, "_write_bytes", real_write)  # space freed: the same command resumes
    assert run_train(tmp_path / "full", "--run-name", "r", "--epochs", "3") == reference
    assert metrics_rows(run_dir) == metrics_rows(tmp_path / "whole" / "r")


def test_a_read_only_runs_root_is_refused_with_its_path(run_train, tmp_path, capsys, monkeypatch):
    def read_only(path, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(os, "mkdir", read_only)
    err = refused(capsys, run_train, tmp_path / "runs", "--epochs", "1", code=1)
    assert f"cannot create {tmp_path / 'runs' / 'r'}" in err and "Read-only file system" in err
    assert "--runs-root" in err and "Traceback" not in err

# -----------------------------------------------------------------------------
# torch.compile failing at the first step (no Triton, an inductor bug), as on CUDA


def failing_compile(fn, **kwargs):
    def compiled(*args, **kw):
        raise RuntimeError("Cannot find a working triton installation\nmore detail")
    return compiled


def as_on_cuda(monkeypatch):
    """--compile auto decides as on CUDA (where it compiles), the run staying on the CPU."""
    real = train.compile_checked
    monkeypatch.setattr(train, "compile_checked",
                        lambda model, mode, device, *a: real(model, mode, torch.device("cuda"), *a))


@pytest.mark.parametrize("model", ["nwm", "unet"])
def test_a_compile_error_falls_back_to_eager_steps_and_is_recorded(run_train, tmp_path, capsys, monkeypatch, model):
    args = ("--run-name", "r", "--epochs", "2", "--model", model, "--width", "2")
    reference = run_train(tmp_path / "eager", *args, "--compile", "off")
    monkeypatch.setattr(torch, "compile", failing_compile)
    as_on_cuda(monkeypatch)
    capsys.readouterr()
    assert run_train(tmp_path / "auto", *args, "--compile", "auto") == reference  # the trial step left no trace
    assert "warning: torch.compile failed (Cannot find a working triton installation); training with eager steps" \
        in capsys.readouterr().err
    assert runs.load_json(tmp_path / "auto" / "r" / runs.CONFIG)["compile"] == \
        "failed: Cannot find a working triton installation"
    assert metrics_rows(tmp_path / "auto" / "r") == metrics_rows(tmp_path / "eager" / "r")
    assert runs.load_json(tmp_path / "eager" / "r" / runs.CONFIG)["compile"] == "off"


def test_a_compile_error_with_compile_on_is_a_clear_error(run_train, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch, "compile", failing_compile)
    monkeypatch.setattr(train, "train_one_epoch", no_training)
    err = refused(capsys, run_train, tmp_path, "--compile", "on", code=1)
    assert "--compile on: torch.compile failed (Cannot find a working triton installation)" in err
    assert "--compile auto" in err and "Traceback" not in err

# -----------------------------------------------------------------------------
# a signal during the final test


def test_sigterm_during_the_final_test_stops_the_run_and_the_same_command_tests_it(run_train, tmp_path,
                                                                                    capsys, monkeypatch):
    reference = run_train(tmp_path / "whole", "--run-name", "r", "--epochs", "2")
    real_evaluate = train.evaluate

    def sigterm_during_test(*args, desc="eval", **kwargs):
        if desc == "test":
            os.kill(os.getpid(), signal.SIGTERM)
        return real_evaluate(*args, desc=desc, **kwargs)

    monkeypatch.setattr(train, "evaluate", sigterm_during_test)
    err = refused(capsys, run_train, tmp_path / "term", "--epochs", "2", code=143)
    assert "interrupted (SIGTERM) after epoch 2" in err and "run the same command to resume" in err
    assert not runs.is_finished(tmp_path / "term" / "r")
    monkeypatch.setattr(train, "evaluate", real_evaluate)
    assert run_train(tmp_path / "term", "--run-name", "r", "--epochs", "2") == reference

# -----------------------------------------------------------------------------
# data


def test_arrays_changed_behind_dataset_json_are_refused_with_the_rebuild_command(tiny_dataset, run_train, tmp_path,
                                                                                capsys, monkeypatch):
    path = tiny_dataset / "tiny" / "train_images.npy"
    np.save(path, 255 - np.load(path))  # same shape and dtype, dataset.json untouched
    monkeypatch.setattr(train, "train_one_epoch", no_training)
    err = refused(capsys, run_train, tmp_path, "--epochs", "1")
    assert "train_images.npy" in err and "SHA-256" in err and "--force" in err
    assert not (tmp_path / "r").exists()

# -----------------------------------------------------------------------------
# numbers on the command line


@pytest.mark.parametrize("args, message", [
    (["--tolerance", "nan"], "argument --tolerance: must be a finite number, got nan"),
    (["--tolerance", "-5"], "argument --tolerance: must be at least 0, got -5"),
    (["--dt", "inf"], "argument --dt: must be a finite number, got inf"),
    (["--lr", "nan"], "argument --lr: must be a finite number, got nan"),
    (["--max-minutes", "inf"], "argument --max-minutes: must be a finite number, got inf"),
    (["--stop-after-minutes", "inf"], "argument --stop-after-minutes: must be a finite number, got inf"),
    (["--seed", "-1"], "argument --seed: must be at least 0, got -1"),
    (["--seed", str(2**64)], f"argument --seed: must be at most {2**64 - 1}, got {2**64}"),
])
def test_numeric_flags_refuse_nan_inf_and_their_range_by_name(run_train, tmp_path, capsys, args, message):
    assert message in refused(capsys, run_train, tmp_path, *args)


def test_a_model_too_large_for_the_machine_is_refused_with_an_estimate(run_train, tmp_path, capsys):
    err = refused(capsys, run_train, tmp_path, "--hidden-channels", "100000")
    assert "needs at least" in err and "GiB" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()

# -----------------------------------------------------------------------------
# produce_scores.py and predict.py


def test_scores_go_under_the_runs_root_given(tiny_dataset, run_train, tmp_path, monkeypatch):
    run_train(tmp_path / "R", "--run-name", "r", "--epochs", "1")
    monkeypatch.delenv("WAVES_SCORES", raising=False)
    monkeypatch.delenv("WAVES_RUNS_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    produce_scores.main(["--runs-root", str(tmp_path / "R"), "--data-root", str(tiny_dataset), "--no-progress",
                        "--device", "cpu"])
    assert list(pd.read_csv(tmp_path / "R" / "scores.csv")["run"].dropna()) == ["r"]  # and the background row
    assert not (tmp_path / "runs").exists()


def test_a_truncated_checkpoint_is_called_damaged_by_predict_and_produce_scores(tiny_dataset, run_train, tmp_path,
                                                                                capsys):
    run_train(tmp_path / "runs", "--run-name", "r", "--epochs", "1")
    run_dir = tmp_path / "runs" / "r"
    truncate(run_dir / runs.CHECKPOINT)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "mine.png")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        predict.main([str(tmp_path / "mine.png"), "--model", str(run_dir), "--out", str(tmp_path / "out"),
                      "--device", "cpu"])
    assert exit_info.value.code == 2 and "checkpoint.pt is damaged" in capsys.readouterr().err
    _, skipped = produce_scores.main(["--runs-root", str(tmp_path / "runs"), "--data-root", str(tiny_dataset),
                                      "--out", str(tmp_path / "scores.csv"), "--no-progress", "--device", "cpu"])
    assert [(d, "checkpoint.pt is damaged" in why) for d, why in skipped] == [(run_dir, True)]


def test_an_image_too_large_to_decode_safely_is_refused(run_train, tmp_path, capsys, monkeypatch):
    run_train(tmp_path / "runs", "--run-name", "r", "--epochs", "1")
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 256 pixels now count as a decompression bomb
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        predict.main([str(tmp_path / "huge.png"), "--model", str(tmp_path / "runs" / "r"),
                      "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "huge.png: too large to decode safely" in err and "Traceback" not in err
