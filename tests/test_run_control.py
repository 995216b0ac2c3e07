"""How a run behaves on a real machine: signals, time slices, continuing a finished run,
what it records, and what it prints to a log. (Drop-last batching: tests/test_engine.py.)"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import runs
import train
from conftest import FAST, REPO, metrics_rows, train_command

# -----------------------------------------------------------------------------
# signals, on a real process


@pytest.mark.slow
@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_the_run_at_a_safe_point_and_it_resumes(small_tetrominoes, tmp_path, signum, status):
    command = train_command(small_tetrominoes, tmp_path)
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dir = tmp_path / "r"
    deadline = time.time() + 120
    while len(runs.load_metrics(run_dir)) < 2 and time.time() < deadline:  # well inside the epoch loop
        time.sleep(0.05)
    process.send_signal(signum)
    out, err = process.communicate(timeout=120)
    assert process.returncode == status
    assert "Traceback" not in err
    done = len(runs.load_metrics(run_dir))
    assert f"interrupted ({signal.Signals(signum).name}) after epoch {done}" in err
    assert "run the same command to resume" in err
    assert not runs.is_finished(run_dir) and done >= 2

    # the same command resumes (one more epoch here: --stop-after-minutes does not change the run)
    again = subprocess.run(command + ["--stop-after-minutes", "1e-9"], cwd=REPO, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    # a signal after some batches of the next epoch keeps them too
    kept = f"kept epoch {done + 1}'s first " in err
    assert (f"resuming {run_dir} in epoch {done + 1}, after " if kept else f"resuming {run_dir} after epoch {done}") \
        in again.stdout
    assert len(runs.load_metrics(run_dir)) == done + 1


@pytest.mark.slow
def test_a_log_gets_one_line_per_epoch_and_why_the_run_ended(small_tetrominoes, tmp_path):
    # output to a pipe, as to a cluster's log file: no progress bars, no escape codes
    result = subprocess.run(train_command(small_tetrominoes, tmp_path, "--epochs", "3"), cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stdout + result.stderr and "\x1b" not in result.stdout + result.stderr
    assert [line.split()[1] for line in result.stdout.splitlines() if line.startswith("epoch")] == \
        ["1/3", "2/3", "3/3"]
    assert "training ended after epoch 3: reached --epochs" in result.stdout
    budget = subprocess.run(train_command(small_tetrominoes, tmp_path, "--run-name", "b", "--max-minutes", "1e-9"),
                            cwd=REPO, capture_output=True, text=True)
    assert "training ended after epoch 1: time budget (--max-minutes) spent" in budget.stdout

# -----------------------------------------------------------------------------
# time slices and continuing


@pytest.mark.slow
def test_a_run_advanced_in_slices_ends_exactly_where_an_uninterrupted_run_ends(run_train, tmp_path):
    whole = run_train(tmp_path / "whole", "--epochs", "4", "--run-name", "r")
    slices = 0
    while not runs.is_finished(tmp_path / "sliced" / "r"):
        result = run_train(tmp_path / "sliced", "--epochs", "4", "--run-name", "r",
                           "--stop-after-minutes", "1e-9")  # one epoch per invocation
        slices += 1
        assert (result is None) == (slices < 4)
    assert slices == 4
    assert metrics_rows(tmp_path / "sliced" / "r") == metrics_rows(tmp_path / "whole" / "r")
    assert result == whole
    invocations = runs.load_json(tmp_path / "sliced" / "r" / runs.CONFIG)["invocations"]  # one per slice
    assert [i["first_epoch"] for i in invocations] == [1, 2, 3, 4]
    assert all(i["git"].keys() == {"commit", "dirty"} and i["threads"] >= 1 and i["device_name"] for i in invocations)
    assert len(runs.load_json(tmp_path / "whole" / "r" / runs.CONFIG)["invocations"]) == 1


def test_a_finished_run_continues_when_only_its_budget_grows(run_train, tmp_path, capsys):
    run_train(tmp_path / "a", "--epochs", "2", "--run-name", "r")
    longer = run_train(tmp_path / "a", "--epochs", "4", "--run-name", "r")
    straight = run_train(tmp_path / "b", "--epochs", "4", "--run-name", "r")
    assert longer["epochs_run"] == 4 and longer == straight  # tested again at its new end
    assert metrics_rows(tmp_path / "a" / "r") == metrics_rows(tmp_path / "b" / "r")
    config = runs.load_json(tmp_path / "a" / "r" / runs.CONFIG)
    assert config["epochs"] == 4
    assert config["budget_changes"][0]["after_epoch"] == 2 and config["budget_changes"][0]["changed"] == \
        {"epochs": [2, 4]}
    capsys.readouterr()
    for change in (["--lr", "0.01"], ["--T", "6"], ["--epochs", "3"]):
        with pytest.raises(SystemExit) as exit_info:
            run_train(tmp_path / "a", "--epochs", "4", "--run-name", "r", *change)
        assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "lr: 0.001 there, 0.01 now" in err and "T: 8 there, 6 now" in err
    assert "--epochs 3 is below the 4 epochs" in err

# -----------------------------------------------------------------------------
# validation and records


@pytest.mark.parametrize("args, message", [
    (["--train-size", "0"], "argument --train-size: must be at least 1, got 0"),
    (["--val-size", "0"], "argument --val-size: must be at least 1, got 0"),
    (["--train-size", "49"], "--train-size 49: the tiny train split holds 48 images (1..48)"),
    (["--val-size", "17"], "--val-size 17: the tiny val split holds 16 images (1..16)"),
    (["--batch-size", "40", "--train-size", "32"], "--batch-size 40 is larger than the 32 training images"),
    (["--epochs", "-5"], "argument --epochs: must be at least 1, got -5"),
    (["--lr", "0"], "argument --lr: must be positive, got 0"),
    (["--threads", "0"], "argument --threads: must be at least 1, got 0"),
])
def test_settings_are_refused_by_flag_before_a_run_directory_exists(run_train, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        run_train(tmp_path / "runs", *args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_config_records_the_commit_data_and_threads(run_train, tmp_path):
    run_train(tmp_path, "--epochs", "1", "--run-name", "r", "--threads", "1")
    config = json.loads((tmp_path / "r" / runs.CONFIG).read_text())
    assert set(config["git"]) == {"commit", "dirty"}
    if (REPO / ".git").exists():
        assert len(config["git"]["commit"]) == 40 and isinstance(config["git"]["dirty"], bool)
    assert len(config["data"]["sha256"]) == 64 and config["data"]["split_sizes"]["train"] == 48
    assert "threads" not in config or config["threads"] == 1
    assert torch.get_num_threads() == 1
    torch.set_num_threads(max(1, len(__import__("os").sched_getaffinity(0))))


@pytest.mark.slow
def test_help_shows_each_default_once():
    text = subprocess.run([sys.executable, "train.py", "--help"], cwd=REPO, capture_output=True, text=True).stdout
    flat = " ".join(text.split())
    assert "(default: None)" not in flat and "(default: True)" not in flat and "(default: False)" not in flat
    assert flat.count("(default: $WAVES_DATA_ROOT, else ./data)") == 1
    assert "--threads" in flat and "--stop-after-minutes" in flat and "--cuda-graph" in flat
    analysis_help = subprocess.run([sys.executable, "-m", "analysis", "--help"], cwd=REPO, capture_output=True,
                                   text=True).stdout
    for command in ("tables", "squares", "erf"):
        assert command in analysis_help
    assert "square-area theory" in analysis_help



@pytest.mark.slow
def test_time_spent_stopped_counts_neither_toward_the_budget_nor_in_the_epochs_seconds(run_train, tmp_path,
                                                                                      monkeypatch):
    real_epoch, calls, stop_seconds = train.train_one_epoch, [], 10

    def stopped_in_second_epoch(*a, **k):  # a helper process stops and continues this one, as Ctrl-Z and fg do
        calls.append(1)
        if len(calls) == 2:
            pid = os.getpid()
            subprocess.Popen(["sh", "-c", f"kill -STOP {pid}; sleep {stop_seconds}; kill -CONT {pid}"])
            time.sleep(1)  # stopped in here
        return real_epoch(*a, **k)

    monkeypatch.setattr(train, "train_one_epoch", stopped_in_second_epoch)
    started = time.perf_counter()
    run_train(tmp_path, "--run-name", "r", "--epochs", "3")
    wall = time.perf_counter() - started
    assert wall > stop_seconds  # it was stopped
    # --max-minutes sums these; the running time of the batch the stop fell in is all they may lose
    recorded = sum(float(row["seconds"]) for row in runs.load_metrics(tmp_path / "r"))
    assert recorded < wall - stop_seconds + 3, (recorded, wall)


def test_the_bf16_coupling_is_chosen_per_invocation_and_recorded(run_train, tmp_path, monkeypatch, capsys):
    """--bf16-coupling only changes how a slice computes (like --amp): a run may continue with the other
    value when the command names it, not by leaving the flag out, and each invocation's record says which
    it ran with."""
    from models import common
    monkeypatch.setattr(common, "_bf16_coupling", False)
    run_train(tmp_path, "--run-name", "r", "--epochs", "1", "--bf16-coupling", "on")
    assert common.bf16_coupling()
    with pytest.raises(SystemExit):  # the default is off: not what the last slice ran with
        run_train(tmp_path, "--run-name", "r", "--epochs", "2")
    assert "last slice ran with --bf16-coupling on, and this command leaves it off" in capsys.readouterr().err
    run_train(tmp_path, "--run-name", "r", "--epochs", "2", "--bf16-coupling", "off")
    assert not common.bf16_coupling()
    invocations = runs.load_json(tmp_path / "r" / runs.CONFIG)["invocations"]
    assert [i["bf16_coupling"] for i in invocations] == [True, False]
    run_train(tmp_path, "--run-name", "r", "--epochs", "3")  # the default again, as the last slice
    assert len(runs.load_metrics(tmp_path / "r")) == 3


def test_a_run_resumes_in_its_last_epochs_precision_unless_the_command_names_another(tiny_dataset, tmp_path,
                                                                                     monkeypatch, capsys):
    import settings
    fast = FAST[:FAST.index("--amp")] + FAST[FAST.index("--amp") + 2:]  # --amp left at its default, auto

    def run_train(runs_root, *extra):
        return train.main(["--dataset", "tiny", "--data-root", str(tiny_dataset), "--runs-root", str(runs_root),
                           "--no-progress", *fast, *extra])

    run_train(tmp_path, "--run-name", "r", "--epochs", "1", "--amp", "off")  # float32
    monkeypatch.setattr(settings, "bf16_supported", lambda device: True)  # --amp auto: bfloat16 on this machine
    with pytest.raises(SystemExit) as exit_info:
        run_train(tmp_path, "--run-name", "r", "--epochs", "2")
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "last epoch ran in float32, and --amp auto means bf16 autocast here" in err
    assert len(runs.load_metrics(tmp_path / "r")) == 1  # nothing trained
    run_train(tmp_path, "--run-name", "r", "--epochs", "2", "--amp", "on")  # named: it goes on in bfloat16
    assert [row["precision"] for row in runs.load_metrics(tmp_path / "r")] == ["float32", "bf16 autocast"]
    config = runs.load_json(tmp_path / "r" / runs.CONFIG)  # its top level says how the latest slice computed
    assert (config["amp"], config["precision"]) == (True, "bf16 autocast")
    run_train(tmp_path, "--run-name", "r", "--epochs", "3")  # auto is bfloat16 here, as the last epoch
    assert runs.load_metrics(tmp_path / "r")[-1]["precision"] == "bf16 autocast"
