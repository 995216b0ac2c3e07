"""train.py end to end on a tiny dataset: run files, resume, early stopping, NaN, refusals."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import dataset_config
import pretrained
import runs
import train
from conftest import REPO, metrics_rows
from data_scripts import common
from engine import evaluate
from metrics import METRIC_NAMES


def test_end_to_end_run_writes_every_file(tiny_dataset, run_train, tmp_path):
    test = run_train(tmp_path / "runs", "--epochs", "2", "--run-name", "demo")
    run_dir = tmp_path / "runs" / "demo"

    config = json.loads((run_dir / runs.CONFIG).read_text())
    model, _ = runs.load_model(run_dir)
    assert config["num_params"] == sum(p.numel() for p in model.parameters())
    assert config["dataset"] == "tiny" and config["model"] == "nwm" and config["T"] == 8
    assert config["in_channels"] == 3 and config["num_classes"] == 3
    assert config["versions"]["torch"] == torch.__version__ and config["device"] == "cpu"
    meta = json.loads((tiny_dataset / "tiny" / "dataset.json").read_text())
    assert config["data"] == dataset_config.fingerprint(meta) and len(config["data"]["sha256"]) == 64

    rows = runs.load_metrics(run_dir)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for split in ("train", "val"):
        for name in METRIC_NAMES:
            assert f"{split}_{name}" in rows[0]
    assert "lr" in rows[0]
    # what each epoch ran on: the slices of one run may run on different machines
    assert rows[0]["device_name"] and rows[0]["precision"] == "float32"
    assert rows[0]["threads"] == str(torch.get_num_threads())

    stored = json.loads((run_dir / runs.TEST_METRICS).read_text())
    for name in METRIC_NAMES:
        assert 0 <= stored[name] < 10
    assert len(stored["iou_per_class"]) == 3
    assert stored["epochs_run"] == 2 and stored["best_epoch"] in (1, 2)
    assert stored["background_only"]["iou_foreground"] == 0
    assert stored["iou_foreground"] == test["iou_foreground"]

    # the kept checkpoint is the model the test metrics came from
    from dataset_config import load_dataset
    again = evaluate(model, *load_dataset("tiny", "test", tiny_dataset), 3)
    assert again["loss"] == pytest.approx(stored["loss"], rel=1e-5)
    assert not list(run_dir.glob("*.tmp"))  # every write was completed and renamed


def test_same_seed_same_metrics(run_train, tmp_path):
    run_train(tmp_path / "a", "--epochs", "2", "--seed", "3")
    run_train(tmp_path / "b", "--epochs", "2", "--seed", "3")
    name = "tiny/nwm-linear-T8-h2-seed3"
    assert metrics_rows(tmp_path / "a" / name) == metrics_rows(tmp_path / "b" / name)


def test_killed_run_resumes_to_the_same_result(run_train, tmp_path, monkeypatch):
    args = ("--epochs", "4", "--run-name", "r")
    reference = run_train(tmp_path / "uninterrupted", *args)

    real_epoch, calls = train.train_one_epoch, []

    def killed_in_third_epoch(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_epoch(*a, **k)

    monkeypatch.setattr(train, "train_one_epoch", killed_in_third_epoch)
    with pytest.raises(SystemExit) as exit_info:
        run_train(tmp_path / "killed", *args)
    assert exit_info.value.code == 130
    run_dir = tmp_path / "killed" / "r"
    assert len(metrics_rows(run_dir)) == 2 and not runs.is_finished(run_dir)

    monkeypatch.setattr(train, "train_one_epoch", real_epoch)
    resumed = run_train(tmp_path / "killed", *args)  # the same command again
    assert metrics_rows(run_dir) == metrics_rows(tmp_path / "uninterrupted" / "r")
    for name in METRIC_NAMES:
        assert resumed[name] == reference[name]


def test_resume_flag_takes_the_stored_settings(run_train, tmp_path, monkeypatch):
    real_epoch = train.train_one_epoch
    monkeypatch.setattr(train, "train_one_epoch", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(SystemExit):
        run_train(tmp_path / "runs", "--epochs", "1", "--lr", "0.002", "--run-name", "x/y")
    monkeypatch.setattr(train, "train_one_epoch", real_epoch)
    run_dir = tmp_path / "runs" / "x" / "y"
    result = train.main(["--resume", str(run_dir), "--device", "cpu", "--no-progress"])
    assert runs.is_finished(run_dir) and result["epochs_run"] == 1
    assert runs.load_json(run_dir / runs.CONFIG)["lr"] == 0.002


def test_resume_flag_repairs_a_damaged_metrics_file_as_the_plain_command_does(run_train, tmp_path, capsys):
    reference = run_train(tmp_path / "whole", "--run-name", "r", "--epochs", "2")
    run_dir = tmp_path / "cut" / "r"
    run_train(tmp_path / "cut", "--run-name", "r", "--epochs", "2", "--stop-after-minutes", "1e-9")
    (run_dir / runs.METRICS).write_bytes(b"\xff\xfe\x00garbage")  # last.pt holds the epoch's row
    result = train.main(["--resume", str(run_dir), "--device", "cpu", "--no-progress"])
    assert "Traceback" not in capsys.readouterr().err
    assert {k: result[k] for k in METRIC_NAMES} == {k: reference[k] for k in METRIC_NAMES}


def test_config_keeps_each_invocations_outcomes_in_its_record(run_train, tmp_path):
    run_dir = tmp_path / "r"
    run_train(tmp_path, "--run-name", "r", "--epochs", "2", "--amp", "on", "--stop-after-minutes", "1e-9")
    run_train(tmp_path, "--run-name", "r", "--epochs", "2", "--amp", "off")  # a slice named another precision
    config = runs.load_json(run_dir / runs.CONFIG)
    assert (config["amp"], config["precision"]) == (False, runs.precision(False))  # how the latest slice computed
    assert [(i["amp"], i["precision"], i["compile"]) for i in config["invocations"]] == \
        [(True, runs.precision(True), config["compile"]), (False, runs.precision(False), config["compile"])]


def test_resume_flag_leaves_the_first_machines_device_and_segment(run_train, tmp_path):
    run_dir = tmp_path / "runs" / "r"
    run_train(tmp_path / "runs", "--run-name", "r", "--epochs", "2", "--lr", "0.002", "--stop-after-minutes", "1e-9")
    config = runs.load_json(run_dir / runs.CONFIG)  # as a run begun on a GPU stores it: "auto" resolved there
    runs.save_json(dict(config, device="cuda", bptt_segment=7, progress=False), run_dir / runs.CONFIG)
    _, args, _ = train.parse(["--resume", str(run_dir)])
    assert (args.device, args.bptt_segment, args.progress) == ("auto", "auto", True)  # this command's defaults
    assert (args.lr, args.epochs, args.dataset) == (0.002, 2, "tiny")


def test_finished_run_is_not_trained_again(run_train, tmp_path, capsys):
    first = run_train(tmp_path, "--epochs", "1", "--run-name", "done")
    before = (tmp_path / "done" / runs.LAST).stat().st_mtime_ns
    again = run_train(tmp_path, "--epochs", "1", "--run-name", "done")
    assert again == first and (tmp_path / "done" / runs.LAST).stat().st_mtime_ns == before
    assert "already finished" in capsys.readouterr().out


def test_early_stopping_after_patience(run_train, tmp_path):
    # a tolerance no epoch can beat: only epoch 1 counts as an improvement
    result = run_train(tmp_path, "--epochs", "10", "--patience", "2",
                       "--tolerance", "100", "--run-name", "es")
    assert result["stop_reason"] == "early_stopping"
    assert result["best_epoch"] == 1 and result["epochs_run"] == 3
    assert len(metrics_rows(tmp_path / "es")) == 3


def test_min_epochs_delays_early_stopping(run_train, tmp_path):
    result = run_train(tmp_path, "--epochs", "10", "--patience", "1", "--min-epochs", "5",
                       "--tolerance", "100", "--run-name", "min")
    assert result["epochs_run"] == 5


@pytest.mark.slow
def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(run_train, tmp_path, monkeypatch, capsys):
    real_epoch, calls = train.train_one_epoch, []

    def poisoned_in_second_epoch(step, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            with torch.no_grad():
                next(step.model.parameters()).fill_(float("nan"))
        return real_epoch(step, *a, **k)

    monkeypatch.setattr(train, "train_one_epoch", poisoned_in_second_epoch)
    with pytest.raises(SystemExit) as exit_info:
        run_train(tmp_path, "--epochs", "5", "--run-name", "nan")
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "training stopped in epoch 2" in err and "nan" in err and "epoch 1" in err
    run_dir = tmp_path / "nan"
    checkpoint = torch.load(run_dir / runs.CHECKPOINT, weights_only=True)
    assert checkpoint["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values())
    assert not runs.is_finished(run_dir)


@pytest.mark.slow
def test_a_different_run_under_the_same_name_is_refused(run_train, tmp_path, capsys):
    run_train(tmp_path, "--epochs", "1", "--run-name", "same")
    with pytest.raises(SystemExit) as exit_info:
        run_train(tmp_path, "--epochs", "2", "--lr", "0.01", "--run-name", "same")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "lr: 0.001 there, 0.01 now" in err and "--restart" in err


@pytest.mark.slow
def test_restart_replaces_a_run(run_train, tmp_path):
    run_train(tmp_path, "--epochs", "1", "--run-name", "again")
    result = run_train(tmp_path, "--epochs", "2", "--run-name", "again", "--restart")
    assert result["epochs_run"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("model", ["lstm", "cnn", "unet"])
def test_baselines_train_end_to_end(run_train, tmp_path, model):
    result = run_train(tmp_path, "--model", model, "--epochs", "1", "--depth", "2", "--width", "2")
    config = json.loads(next(tmp_path.rglob("config.json")).read_text())
    assert config["model"] == model and 0 <= result["acc"] <= 1
    if model != "lstm":
        assert config["readout"] is None


@pytest.mark.slow
def test_nwm_learns_the_tiny_task(run_train, tmp_path):
    # a pixel's class depends on the size of its whole square; at this budget some seeds
    # only separate foreground from background, so the bound asks for that much (0.5 is
    # all squares found, one class for all) and a large drop of the validation loss
    result = run_train(tmp_path, "--epochs", "40", "--lr", "3e-3", "--T", "12",
                       "--batch-size", "8", "--readout-width", "32", "--c-mid", "16", "--run-name", "learn")
    assert result["iou_foreground"] > 0.45 > result["background_only"]["iou_foreground"]
    val_loss = [float(r["val_loss"]) for r in metrics_rows(tmp_path / "learn")]
    assert min(val_loss) < 0.25 * val_loss[0]


def cli(*args, env=None):
    return subprocess.run([sys.executable, "train.py", *args], cwd=REPO, capture_output=True, text=True, env=env)


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["--model", "transformer"], "invalid choice: 'transformer'"),
    (["--readout", "median"], "invalid choice: 'median'"),
    (["--dataset", "cifar"], "--dataset: unknown dataset 'cifar'"),
    (["--model", "cnn", "--T", "2"], "--T must be at least 4"),
    (["--model", "unet", "--readout", "fft"], "--readout: the unet has no temporal readout"),
    (["--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
    (["--device", "cuda:0"] if not torch.cuda.is_available() else ["--device", "tpu"], "--device"),
])
def test_bad_settings_are_refused_before_any_work(args, message, tmp_path):
    result = cli(*args, "--data-root", str(tmp_path / "nothing"), "--runs-root", str(tmp_path / "runs"))
    assert result.returncode == 2
    assert message in result.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_missing_dataset_names_the_command_that_creates_it(tmp_path):
    result = cli("--dataset", "polygons", "--data-root", str(tmp_path / "d"), "--runs-root", str(tmp_path / "r"))
    assert result.returncode == 2
    assert f"python data_scripts/create_polygons.py --data-root {tmp_path / 'd'}" in result.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_help_documents_every_setting():
    out = cli("--help").stdout
    for flag in ["--dataset", "--model", "--readout", "--T", "--dt", "--c-mid", "--hidden-channels",
                 "--readout-width", "--readout-depth", "--depth", "--width", "--epochs", "--min-epochs",
                 "--patience", "--tolerance", "--lr", "--batch-size", "--seed", "--device", "--data-root",
                 "--runs-root", "--run-name", "--train-size", "--resume", "--quickstart", "--bptt-segment",
                 "--amp", "--compile"]:
        assert flag in out
    assert "default: 0.001" in out and "default: 300" in out


@pytest.mark.slow
def test_time_budget_stops_after_the_epoch_that_spends_it(run_train, tmp_path):
    test = run_train(tmp_path / "runs", "--epochs", "5", "--max-minutes", "1e-6", "--run-name", "b")
    assert test["epochs_run"] == 1 and test["stop_reason"] == "time_budget"
    assert len(metrics_rows(tmp_path / "runs" / "b")) == 1


def test_a_deadline_pauses_between_batches_and_the_run_ends_as_an_uninterrupted_one(run_train, tmp_path, capsys):
    """With no time left, an invocation runs what it cannot judge yet (its first batch; a validation pass
    never timed here) and pauses before the next piece, keeping the epoch's progress in last.pt."""
    reference = run_train(tmp_path / "whole", "--epochs", "2", "--run-name", "d")
    run_dir, out = tmp_path / "cut" / "d", []
    for _ in range(5):
        assert run_train(tmp_path / "cut", "--epochs", "2", "--run-name", "d", "--end-by-minutes", "1e-6") is None
        out.append(capsys.readouterr().out)
    assert "paused in epoch 1 after 1 of its 3 batches, which are kept (--end-by-minutes 1e-06: 0.0 minutes left, " \
           "under 1.5x the" in out[0] and "a training batch here takes)" in out[0]
    assert f"resuming {run_dir} in epoch 1, after 1 of its 3 batches" in out[1] and "epoch 1 after 2 of" in out[1]
    assert "epoch   1/2  train loss" in out[2] and "paused in epoch 2 after 1 of its 3 batches" in out[2]  # batch 3, validation
    assert "paused in epoch 2 after 2 of its 3 batches" in out[3]
    assert runs.epoch_in_progress(run_dir) == ", and 3 of 3 batches of epoch 2"  # what the launcher reports
    assert "paused in epoch 2, its training pass done and kept" in out[4]
    assert "the validation pass here takes)" in out[4]  # timed in epoch 1
    assert runs.load_torch(run_dir / runs.LAST)["epoch_in_progress"]["training"]["done"] == 3
    test = run_train(tmp_path / "cut", "--epochs", "2", "--run-name", "d", "--end-by-minutes", "30")
    assert metrics_rows(run_dir) == metrics_rows(tmp_path / "whole" / "d")
    assert {k: test[k] for k in METRIC_NAMES} == {k: reference[k] for k in METRIC_NAMES}
    assert all(float(row["val_seconds"]) > 0 for row in runs.load_metrics(run_dir))


def test_a_deadline_can_pause_a_finished_training_before_its_test(run_train, tmp_path, capsys):
    for _ in range(3):  # a batch each, the third with the validation pass: epoch 1 of 1 ends
        assert run_train(tmp_path, "--epochs", "1", "--run-name", "t", "--end-by-minutes", "1e-6") is None
    out = capsys.readouterr().out
    assert "paused after epoch 1, before testing (--end-by-minutes 1e-06: 0.0 minutes left, under 1.5x the" in out
    assert "the test pass here takes)" in out and not runs.is_finished(tmp_path / "t")
    assert run_train(tmp_path, "--epochs", "1", "--run-name", "t", "--end-by-minutes", "30")["epochs_run"] == 1


def test_a_stop_signal_between_batches_keeps_the_epochs_progress(run_train, tmp_path, monkeypatch, capsys):
    import os
    import signal
    reference = run_train(tmp_path / "whole", "--epochs", "2", "--run-name", "r")
    real_epoch, calls = train.train_one_epoch, []

    def sigterm_before_the_second_batch(*a, **k):
        def pause():
            calls.append(1)
            if len(calls) == 2:
                os.kill(os.getpid(), signal.SIGTERM)  # what SLURM sends; the next safe point stops
            return None
        return real_epoch(*a[:-1], pause)

    monkeypatch.setattr(train, "train_one_epoch", sigterm_before_the_second_batch)
    with pytest.raises(SystemExit) as exit_info:
        run_train(tmp_path / "cut", "--epochs", "2", "--run-name", "r")
    assert exit_info.value.code == 143
    run_dir = tmp_path / "cut" / "r"
    err = capsys.readouterr().err
    assert "kept epoch 1's first 2 of 3 batches in" in err
    assert "interrupted (SIGTERM) after epoch 0, and 2 of 3 batches of epoch 1: every finished epoch (and batch)" in err
    assert runs.load_torch(run_dir / runs.LAST)["epoch_in_progress"]["training"]["done"] == 2
    assert not (run_dir / runs.METRICS).exists()
    monkeypatch.setattr(train, "train_one_epoch", real_epoch)
    test = run_train(tmp_path / "cut", "--epochs", "2", "--run-name", "r")
    assert metrics_rows(run_dir) == metrics_rows(tmp_path / "whole" / "r")
    assert {k: test[k] for k in METRIC_NAMES} == {k: reference[k] for k in METRIC_NAMES}


def test_a_stop_signal_during_validation_keeps_the_training_pass(run_train, tmp_path, monkeypatch, capsys):
    import os
    import signal
    reference = run_train(tmp_path / "whole", "--epochs", "2", "--run-name", "r")
    real_evaluate = train.evaluate

    def sigterm_in_validation(*a, **k):  # a scheduler's SIGTERM, its kill soon after: no waiting for the pass
        os.kill(os.getpid(), signal.SIGTERM)
        return real_evaluate(*a, **k)

    monkeypatch.setattr(train, "evaluate", sigterm_in_validation)
    with pytest.raises(SystemExit) as exit_info:
        run_train(tmp_path / "cut", "--epochs", "2", "--run-name", "r")
    assert exit_info.value.code == 143
    run_dir = tmp_path / "cut" / "r"
    assert "kept epoch 1's training pass in" in capsys.readouterr().err
    progress = runs.load_torch(run_dir / runs.LAST)["epoch_in_progress"]["training"]
    assert progress["done"] == 3 and not (run_dir / runs.METRICS).exists()  # all 3 batches of epoch 1
    monkeypatch.setattr(train, "evaluate", real_evaluate)
    test = run_train(tmp_path / "cut", "--epochs", "2", "--run-name", "r")  # validates epoch 1, trains epoch 2
    assert metrics_rows(run_dir) == metrics_rows(tmp_path / "whole" / "r")
    assert {k: test[k] for k in METRIC_NAMES} == {k: reference[k] for k in METRIC_NAMES}


def test_a_deadline_judges_each_piece_by_the_slowest_recent_one_on_this_hardware(monkeypatch):
    here, other = dict(device_name="cpu A", precision="float32", threads=1), dict(device_name="cpu B")
    history = [dict(val_seconds=s, **hardware) for s, hardware in
               [(900, here), (10, here), (20, {**here, "threads": 2}), (30, here), (40, other), (25, here)]]
    history.append(dict(here))  # a row from before val_seconds was recorded
    clock = [100.0]
    monkeypatch.setattr(train.time, "perf_counter", lambda: clock[0])
    deadline = train.Deadline(1, 100.0, history, here, running_time=lambda: clock[0])  # 60 s from now
    # 900 is older than the last three validation passes here; the test split is twice the validation one
    assert deadline.pass_seconds(200, 16, 100) == 60
    assert deadline.too_late(30, "the validation pass") is None
    assert "1.0 minutes left, under 1.5x the 41.0 s the validation pass here takes" in \
        deadline.too_late(41, "the validation pass")
    assert deadline.why.startswith("--end-by-minutes 1:")
    elsewhere = train.Deadline(1, 100.0, history, {**here, "precision": "bf16 autocast"}, running_time=lambda: clock[0])
    assert elsewhere.pass_seconds(100, 16, 100) is None  # nothing to judge by: the pass runs
    pause = elsewhere.batch_check()
    assert pause() is None  # the first batch of an invocation runs unjudged
    clock[0] += 2.5
    assert pause() is None and elsewhere.batch_seconds == [2.5]
    assert elsewhere.pass_seconds(100, 16, 100) == 2.5 * 7  # 7 batches, each costing at most a training batch
    clock[0] += 40
    assert "under 1.5x the 40.0 s a training batch here takes" in pause()  # 40 s taken: 20 s left


def test_quickstart_preset_replaces_defaults_and_explicit_flags_win():
    _, args = train.parse_args(["--quickstart", "--epochs", "3"])
    assert (args.dataset, args.model, args.readout) == ("tetrominoes", "nwm", "linear")
    assert (args.train_size, args.val_size, args.batch_size, args.readout_width) == (1000, 250, 16, 64)
    assert args.epochs == 3 and args.run_name == "quickstart"
    assert args.T == 100 and args.lr == 1e-3  # the paper's model and optimiser


@pytest.mark.parametrize("flags, params, steps", [
    # the NWM: encoders of omega, alpha (3->4->4->2 channels, 3x3 with biases: 112 + 148 + 74 each) and of the
    # position (3->4->4->4->2: 112 + 148 + 148 + 74), the 2->2 coupling (36), the readout (6x4 time weights and
    # 4 layers of width 8: 24 + 72 + 72 + 72 + 27): 1453 parameters
    (["--model", "nwm"], 1453, 6),  # --bptt-segment auto, not yet resolved for a device: every step
    (["--model", "nwm", "--bptt-segment", "2"], 1453, 2),
    # the CNN: a 3->2 3x3 convolution (56), the 1x1 expansion to T/2 - 1 = 1 feature a channel (6), a head of
    # width 4 (12 + 20 + 20 + 15); no hidden sequence
    (["--model", "cnn", "--T", "4", "--depth", "1", "--readout-width", "4"], 56 + 6 + 67, 0),
])
def test_memory_needed_counts_adam_state_the_images_and_one_batchs_hidden_sequence(flags, params, steps,
                                                                                  tiny_dataset):
    _, args, info = train.parse(["--dataset", "tiny", "--data-root", str(tiny_dataset), "--T", "6", "--c-mid", "4",
                                 "--readout-width", "8", "--batch-size", "4", "--train-size", "40", *flags])
    images = 40 + 16 + 16  # --train-size, then the tiny dataset's val and test splits
    needed = (16 * params  # float32 weights, gradients and Adam's two moments
              + images * 16 * 16 * (3 * 4 + 8)  # 16x16 RGB images in float32, int64 masks
              + 4 * steps * 2 * 16 * 16 * 4)  # a batch of 4, 2 hidden channels in float32
    assert train.memory_needed(args, info, dict(train=48, val=16, test=16)) == (needed, params, images)


@pytest.mark.slow
def test_a_run_is_not_continued_on_other_data(tiny_dataset, run_train, tmp_path, capsys):
    run_train(tmp_path / "runs", "--epochs", "1", "--run-name", "d")
    folder = tiny_dataset / "tiny"
    meta = json.loads((folder / "dataset.json").read_text())
    arrays = {f.stem: np.load(f) for f in folder.glob("*.npy")}
    arrays["train_images"] = 255 - arrays["train_images"]
    request = {k: meta[k] for k in ("format_version", "dataset", "seed", "split_sizes", "image_size", "channels",
                                    "class_names", "files", "recipe")}
    common.write_dataset(folder, arrays, request)
    with pytest.raises(SystemExit) as exit_info:
        run_train(tmp_path / "runs", "--epochs", "1", "--run-name", "d")
    assert exit_info.value.code == 2
    assert "was trained on other data" in capsys.readouterr().err


def test_the_quickstarts_data_step_gets_no_progress_too(tmp_path, monkeypatch):
    commands = []
    monkeypatch.setattr(train.subprocess, "run", lambda command, **kwargs: commands.append(command))
    _, args = train.parse_args(["--quickstart", "--no-progress", "--data-root", str(tmp_path), "--device", "cpu"])
    train.ensure_quickstart_data(args)
    assert len(commands) == 1 and commands[0][-1] == "--no-progress"


@pytest.mark.slow
def test_the_quickstart_compares_with_the_shipped_model_only_on_the_same_data(tiny_dataset, run_train, tmp_path,
                                                                              monkeypatch):
    shipped_test = run_train(tmp_path / "runs", "--epochs", "2", "--run-name", "shipped")
    monkeypatch.setitem(pretrained.SHIPPED, "tetrominoes/nwm", str(tmp_path / "runs" / "shipped"))
    same = json.loads((tmp_path / "runs" / "shipped" / runs.CONFIG).read_text())["data"]
    line = train.shipped_comparison({"iou_foreground": 0.25}, same)
    assert f"scores test fg IoU {shipped_test['iou_foreground']:.4f}, this run 0.2500" in line
    assert "2 epochs on 48 images" in line
    assert train.shipped_comparison({"iou_foreground": 0.25}, dict(same, sha256="0" * 64)) is None
    monkeypatch.setitem(pretrained.SHIPPED, "tetrominoes/nwm", str(tmp_path / "nowhere"))
    assert train.shipped_comparison({"iou_foreground": 0.25}, same) is None
