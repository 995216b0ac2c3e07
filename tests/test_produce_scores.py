"""produce_scores.py: one row per finished run keyed by its path, idempotent, unfinished and broken
runs listed, safe under concurrent writers and Ctrl-C; the background-only row per dataset; the
score tables made from it (analysis/tables.py)."""
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

import configs
import pretrained
import produce_scores
import runs
import train
from analysis import __main__ as analysis_cli
from analysis import classes, tables
from conftest import REPO
from data_scripts import common
from produce_scores import BASELINE


TRAINED = {}  # the runs below, trained once: every test's tiny dataset holds the same bytes


@pytest.fixture
def runs_root(run_train, tmp_path, tmp_path_factory, monkeypatch):
    """A copy of three finished runs (NWM seeds 0 and 1, CNN depth 2) and one unfinished one."""
    if "root" not in TRAINED:
        # one epoch each, in float32 (conftest.FAST: --amp off), as produce_scores.py re-evaluates
        root = tmp_path_factory.mktemp("trained") / "runs"
        run_train(root, "--epochs", "1", "--seed", "0")
        run_train(root, "--epochs", "1", "--seed", "1")
        run_train(root, "--epochs", "1", "--model", "cnn", "--depth", "2")
        # a run killed during its first epoch: config.json but no test metrics
        with monkeypatch.context() as patch:
            patch.setattr(train, "train_one_epoch", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
            with pytest.raises(SystemExit):
                run_train(root, "--epochs", "1", "--seed", "2")
        TRAINED["root"] = root
    return shutil.copytree(TRAINED["root"], tmp_path / "runs")


def score(runs_root, data_root, out, *extra):
    return produce_scores.main(["--device", "cpu", "--runs-root", str(runs_root), "--data-root", str(data_root),
                                "--out", str(out), *extra])


def trained(table):
    """The rows of runs, without the background-only rows."""
    return table[table["model"] != BASELINE].reset_index(drop=True)


def test_one_row_per_finished_run_and_unfinished_runs_listed(runs_root, tiny_dataset, tmp_path, capsys):
    out = tmp_path / "scores.csv"
    table, skipped = score(runs_root, tiny_dataset, out)
    csv = trained(pd.read_csv(out))
    assert len(csv) == 3
    assert sorted(csv["run"]) == sorted(d.relative_to(runs_root).as_posix() for d in runs.find_runs(runs_root)
                                        if runs.is_finished(d))
    assert set(csv["model"]) == {"nwm", "cnn"} and set(csv["seed"]) == {0, 1}
    for column in ["dataset", "model", "readout", "T", "features_per_channel", "depth", "width", "hidden_channels",
                   "seed", "num_params", "epochs", "acc", "acc_foreground", "iou_foreground", "loss",
                   "loss_foreground", "miou"]:
        assert column in csv.columns
    cnn = csv[csv["model"] == "cnn"].iloc[0]
    assert cnn["depth"] == 2 and pd.isna(cnn["readout"])
    # the CNN's T (conftest.FAST: 8) is no number of steps: its T/2 - 1 = 3 features per channel
    assert pd.isna(cnn["T"]) and cnn["features_per_channel"] == 3
    nwm = csv[csv["model"] == "nwm"]
    assert set(nwm["T"]) == {8} and nwm["features_per_channel"].isna().all()
    assert [d.name for d, _ in skipped] == ["nwm-linear-T8-h2-seed2"]
    assert "unfinished" in capsys.readouterr().out


def test_rescoring_replaces_rows_instead_of_appending(runs_root, tiny_dataset, tmp_path):
    out = tmp_path / "scores.csv"
    score(runs_root, tiny_dataset, out)
    first = out.read_text()
    score(runs_root, tiny_dataset, out)
    assert out.read_text() == first
    # scoring a single run again keeps the other rows
    one = runs.find_runs(runs_root)[0]
    produce_scores.main(["--device", "cpu", str(one), "--runs-root", str(runs_root), "--data-root", str(tiny_dataset),
                         "--out", str(out)])
    assert out.read_text() == first


def test_reevaluation_matches_the_stored_test_metrics(runs_root, tiny_dataset, tmp_path):
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True  # rounds on a GPU
    try:
        evaluated, stored = (trained(score(runs_root, tiny_dataset, tmp_path / f"{name}.csv", *extra)[0])
                             for name, extra in (("a", ()), ("b", ("--no-eval",))))
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32  # float32 is float32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before
    for column in ["acc", "acc_foreground", "iou_foreground", "loss", "loss_foreground", "miou"]:
        assert evaluated[column].tolist() == pytest.approx(stored[column].tolist(), rel=1e-5)


def test_broken_run_is_skipped_with_a_reason(runs_root, tiny_dataset, tmp_path):
    victim = next(d for d in runs.find_runs(runs_root) if runs.is_finished(d))
    (victim / runs.CHECKPOINT).unlink()
    table, skipped = score(runs_root, tiny_dataset, tmp_path / "s.csv")
    assert len(trained(table)) == 2
    reasons = dict((d.name, why) for d, why in skipped)
    assert "broken" in reasons[victim.name]


def test_runs_on_other_data_keep_their_stored_metrics_and_are_labelled(runs_root, tiny_dataset, tmp_path):
    table = trained(score(runs_root, tiny_dataset, tmp_path / "a.csv")[0])
    assert set(table["evaluated"]) == {"re-evaluated"}
    assert all(label.startswith("our recipe, seed 0, sha256 ") for label in table["data"])
    # the dataset is made again with other bytes: the runs were not trained on it
    folder = tiny_dataset / "tiny"
    meta = runs.load_json(folder / "dataset.json")
    arrays = {f.stem: np.load(f) for f in folder.glob("*.npy")}
    arrays["test_masks"] = np.zeros_like(arrays["test_masks"])
    common.write_dataset(folder, arrays, {k: v for k, v in meta.items() if k not in ("sha256", "paper_identical",
                                                                                     "stats")})
    again, _ = score(runs_root, tiny_dataset, tmp_path / "b.csv")
    # the background-only row too comes from the runs' own tests, not from the other data
    assert again.loc[again["model"] == BASELINE, "evaluated"].str.startswith("stored by the test of").all()
    again = trained(again)
    assert all(e.startswith("stored (trained on other data") for e in again["evaluated"])
    for run in again["run"]:
        stored = runs.load_json(runs_root / run / runs.TEST_METRICS)
        assert again.set_index("run").loc[run, "iou_foreground"] == stored["iou_foreground"]


def test_runs_whose_dataset_is_not_under_the_data_root_keep_their_stored_metrics(runs_root, tmp_path, capsys):
    finished = [d for d in runs.find_runs(runs_root) if runs.is_finished(d)]
    first = runs.load_json(finished[0] / runs.TEST_METRICS)
    first.pop("background_only")  # as an older run's test stored it: the next run of the data must give the row
    runs.save_json(first, finished[0] / runs.TEST_METRICS)
    (tmp_path / "empty").mkdir()
    table, skipped = score(runs_root, tmp_path / "empty", tmp_path / "s.csv")
    assert not skipped[1:] and "unfinished" in skipped[0][1]  # the run killed in its first epoch, nothing else
    runs_only = trained(table).set_index("run")
    assert len(runs_only) == 3 and set(runs_only["evaluated"]) == {"stored (its dataset is not under the data root)"}
    for run_dir in finished:
        key = str(run_dir.relative_to(runs_root))
        assert runs_only.loc[key, "iou_foreground"] == runs.load_json(run_dir / runs.TEST_METRICS)["iou_foreground"]
    baseline = table[table["model"] == BASELINE]
    assert len(baseline) == 1 and baseline["evaluated"].iloc[0].startswith("stored by the test of")
    assert "no background-only row" not in capsys.readouterr().out


def test_runs_are_not_re_evaluated_on_arrays_changed_since_their_dataset_was_written(runs_root, tiny_dataset, tmp_path):
    changed = tmp_path / "changed"
    shutil.copytree(tiny_dataset, changed)
    masks = np.load(changed / "tiny" / "test_masks.npy")
    masks[0, 0, 0] = (masks[0, 0, 0] + 1) % 3  # one pixel; dataset.json still names the old arrays
    np.save(changed / "tiny" / "test_masks.npy", masks)
    table, _ = score(runs_root, changed, tmp_path / "s.csv")
    assert set(trained(table)["evaluated"]) == {"stored (its dataset under the data root changed since it was written)"}


def test_a_log_gets_one_plain_line_per_run(runs_root, tiny_dataset, tmp_path, capsys):
    capsys.readouterr()  # (stderr is not a terminal under capsys, as in a log)
    score(runs_root, tiny_dataset, tmp_path / "scores.csv", "--no-eval")
    captured = capsys.readouterr()
    assert "\r" not in captured.out + captured.err
    assert [line.split()[0] for line in captured.out.splitlines() if line.startswith("[")] == ["[1/4]", "[2/4]",
                                                                                              "[3/4]", "[4/4]"]
    score(runs_root, tiny_dataset, tmp_path / "scores.csv", "--no-eval", "--no-progress")
    assert not [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]


def test_the_summary_counts_the_rows_re_evaluated_and_the_rows_stored(runs_root, tiny_dataset, tmp_path, capsys):
    capsys.readouterr()
    score(runs_root, tiny_dataset, tmp_path / "a.csv")
    assert "scored 3 run(s): 3 re-evaluated on the test split, 0 with their stored test metrics;" \
        in capsys.readouterr().out
    (tmp_path / "empty").mkdir()  # the data root lacks the dataset: every row is what the runs stored
    score(runs_root, tmp_path / "empty", tmp_path / "b.csv")
    assert "scored 3 run(s): 0 re-evaluated on the test split, 3 with their stored test metrics;" \
        in capsys.readouterr().out


def test_a_run_that_fails_but_not_on_a_damaged_file_is_not_sent_to_restart(runs_root, tiny_dataset, tmp_path,
                                                                           monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(runs, "load_model", out_of_memory)
    _, skipped = score(runs_root, tiny_dataset, tmp_path / "s.csv")
    reasons = [why for _, why in skipped if not why.startswith("unfinished")]
    assert len(reasons) == 3
    for why in reasons:
        assert "out of memory" in why and "run the same command again" in why and "--restart" not in why


def changed_copy(data_root, tmp_path):
    """A copy of `data_root` whose test masks differ by one pixel from what its dataset.json names."""
    changed = tmp_path / "changed"
    shutil.copytree(data_root, changed)
    masks = np.load(changed / "tiny" / "test_masks.npy")
    masks[0, 0, 0] = (masks[0, 0, 0] + 1) % 3
    np.save(changed / "tiny" / "test_masks.npy", masks)
    return changed


def test_a_changed_dataset_is_hashed_once_not_once_per_run(runs_root, tiny_dataset, tmp_path, monkeypatch):
    check_arrays, checked = produce_scores.check_arrays, []

    def counted_check_arrays(*args):
        checked.append(args)
        return check_arrays(*args)

    monkeypatch.setattr(produce_scores, "check_arrays", counted_check_arrays)
    table, _ = score(runs_root, changed_copy(tiny_dataset, tmp_path), tmp_path / "s.csv")
    assert len(checked) == 1
    assert set(trained(table)["evaluated"]) == {"stored (its dataset under the data root changed since it was written)"}

# -----------------------------------------------------------------------------
# the score file: keyed by path, locked, kept on Ctrl-C, refused when it is someone else's


def test_a_copied_run_keeps_its_own_row(runs_root, tiny_dataset, tmp_path):
    original = next(d for d in runs.find_runs(runs_root) if runs.is_finished(d))
    shutil.copytree(original, runs_root / "copy" / original.name)  # same stored run name, another folder
    table = trained(score(runs_root, tiny_dataset, tmp_path / "s.csv", "--no-eval")[0])
    assert len(table) == 4
    copied = table.set_index("run").loc[[original.relative_to(runs_root).as_posix(), f"copy/{original.name}"]]
    assert copied["seed"].nunique() == 1


# a writer that waits at a barrier, then scores; its slowed writes leave the others every chance to interleave
WRITER = """
import pathlib, sys, time
import produce_scores, runs
save_text = runs.save_text
def slow_save_text(text, path):
    time.sleep(0.5)
    save_text(text, path)
runs.save_text = slow_save_text
pathlib.Path(sys.argv[1]).touch()
while not pathlib.Path(sys.argv[2]).exists():
    time.sleep(0.01)
produce_scores.main(sys.argv[3:])
"""


def test_writers_at_once_lose_no_row(runs_root, tmp_path):
    original = next(d for d in runs.find_runs(runs_root) if runs.is_finished(d))
    copies = [runs_root / "copies" / f"c{i}" for i in range(4)]
    for copy in copies:
        shutil.copytree(original, copy)
    out, go = tmp_path / "scores.csv", tmp_path / "go"
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / f"ready{i}"), str(go), str(copy),
                                 "--runs-root", str(runs_root), "--out", str(out), "--no-eval", "--no-progress",
                                 "--device", "cpu", "--data-root", str(tmp_path / "no_data")],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for i, copy in enumerate(copies)]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready{i}").exists() for i in range(4)) and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()
    results = [w.communicate(timeout=120) for w in writers]
    assert [w.returncode for w in writers] == [0] * 4, results
    table = pd.read_csv(out)
    assert sorted(trained(table)["run"]) == [f"copies/c{i}" for i in range(4)]
    assert (table["model"] == BASELINE).sum() == 1  # the runs' data has one, however many wrote it


def test_ctrl_c_keeps_every_run_scored_before_it(runs_root, tiny_dataset, tmp_path, capsys, monkeypatch):
    evaluate, calls = produce_scores.evaluate, []

    def evaluate_then_ctrl_c(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # Ctrl-C during the second run's evaluation
            os.kill(os.getpid(), signal.SIGINT)
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(produce_scores, "evaluate", evaluate_then_ctrl_c)
    out = tmp_path / "scores.csv"
    with pytest.raises(SystemExit) as exit_info:
        score(runs_root, tiny_dataset, out)
    assert exit_info.value.code == 130
    err = capsys.readouterr().err
    assert "interrupted (SIGINT) after scoring 1 of 4 run(s)" in err and "Traceback" not in err
    first = runs.find_runs(runs_root)[0].relative_to(runs_root).as_posix()
    assert list(trained(pd.read_csv(out))["run"]) == [first]
    monkeypatch.setattr(produce_scores, "evaluate", evaluate)
    score(runs_root, tiny_dataset, out)  # the same command scores them all
    assert len(trained(pd.read_csv(out))) == 3


def no_scoring(*args, **kwargs):
    raise AssertionError("a run was scored although the command should have been refused before any work")


@pytest.mark.parametrize("content, says", [
    (b"step,seconds\n1,2.5\n", "is not a score table (no run, dataset, model column)"),
    (bytes(range(256)) * 4, "is not a score table (not text)"),
    (b'run,dataset,model\n"x,1\n', "is not a score table (Error tokenizing data"),
    (None, "is a folder"),
])
def test_an_out_that_is_not_a_score_table_is_refused_before_any_work(runs_root, tiny_dataset, tmp_path, capsys,
                                                                     monkeypatch, content, says):
    out = tmp_path / "other.csv"
    out.mkdir() if content is None else out.write_bytes(content)
    monkeypatch.setattr(produce_scores, "score_run", no_scoring)
    with pytest.raises(SystemExit) as exit_info:
        score(runs_root, tiny_dataset, out)
    assert says in str(exit_info.value.code) and str(exit_info.value.code).startswith("error: --out")
    assert out.is_dir() if content is None else out.read_bytes() == content


def test_a_run_directory_that_does_not_exist_is_refused(runs_root, tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(produce_scores, "score_run", no_scoring)
    common_args = ["--device", "cpu", "--runs-root", str(runs_root), "--out", str(tmp_path / "s.csv")]
    for args, says in (([str(runs_root / "no_such_run")], "no run directory at"),
                       ([str(tmp_path / "s.csv")], "no run directory at"),
                       ([str(tiny_dataset)], "is not a run directory and holds none"),
                       ([str(runs_root / "empty")], "no run directory at")):
        with pytest.raises(SystemExit) as exit_info:
            produce_scores.main([*args, *common_args])
        assert says in str(exit_info.value.code)
    (tmp_path / "empty_root").mkdir()
    with pytest.raises(SystemExit, match="no runs under"):
        produce_scores.main(["--device", "cpu", "--runs-root", str(tmp_path / "empty_root")])
    outside = tmp_path / "elsewhere"
    shutil.copytree(runs.find_runs(runs_root)[0], outside)
    with pytest.raises(SystemExit, match="is not under the runs root"):
        produce_scores.main([str(outside), *common_args])
    assert not (tmp_path / "s.csv").exists()


@pytest.mark.parametrize("damage", ["text", "truncated"])
def test_a_damaged_checkpoint_is_listed_and_the_table_goes_on(runs_root, tiny_dataset, tmp_path, damage):
    victim = next(d for d in runs.find_runs(runs_root) if runs.is_finished(d))
    checkpoint = victim / runs.CHECKPOINT
    if damage == "text":  # a checkpoint overwritten with another run file
        shutil.copy(victim / runs.METRICS, checkpoint)
    else:
        checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    table, skipped = score(runs_root, tiny_dataset, tmp_path / "s.csv")
    assert len(trained(table)) == 2 and victim.relative_to(runs_root).as_posix() not in set(table["run"])
    assert [d for d, _ in skipped if d == victim] == [victim]
    assert "--restart" in dict(skipped)[victim]  # a damaged file: training it again is the cure


def test_fresh_drops_the_rows_of_runs_not_scored_once_all_are(runs_root, tiny_dataset, tmp_path):
    out = tmp_path / "s.csv"
    score(runs_root, tiny_dataset, out, "--no-eval")
    one = next(d for d in runs.find_runs(runs_root) if runs.is_finished(d))
    table, _ = produce_scores.main(["--device", "cpu", str(one), "--runs-root", str(runs_root), "--out", str(out),
                                    "--data-root", str(tiny_dataset), "--no-eval", "--fresh"])
    model = runs.load_json(one / runs.CONFIG)["model"]
    assert list(table["model"]) == [BASELINE, model] and len(pd.read_csv(out)) == 2


def test_fresh_with_no_run_scored_drops_every_row_and_the_last_line_says_so(runs_root, tiny_dataset, tmp_path,
                                                                            capsys):
    out = tmp_path / "s.csv"
    score(runs_root, tiny_dataset, out, "--no-eval")
    unfinished = runs_root / "tiny" / "nwm-linear-T8-h2-seed2"
    only_unfinished = ["--device", "cpu", str(unfinished), "--runs-root", str(runs_root), "--out", str(out),
                       "--data-root", str(tiny_dataset), "--no-eval"]
    before = out.read_bytes()
    capsys.readouterr()
    produce_scores.main(only_unfinished)
    assert out.read_bytes() == before and f"scored 0 run(s); {out} is unchanged" in capsys.readouterr().out
    table, _ = produce_scores.main([*only_unfinished, "--fresh"])
    assert len(table) == 0 and len(pd.read_csv(out)) == 0
    assert f"scored 0 run(s); {out} holds 0 row(s)" in capsys.readouterr().out


def test_a_run_training_again_loses_its_row(runs_root, tiny_dataset, tmp_path, capsys):
    out = tmp_path / "s.csv"
    score(runs_root, tiny_dataset, out, "--no-eval")
    reopened = runs_root / "tiny" / "nwm-linear-T8-h2-seed1"
    (reopened / runs.TEST_METRICS).unlink()  # as when it is trained on for more epochs
    capsys.readouterr()
    produce_scores.main(["--device", "cpu", str(reopened), "--runs-root", str(runs_root), "--out", str(out),
                         "--data-root", str(tiny_dataset), "--no-eval"])
    printed = capsys.readouterr().out
    assert "tiny/nwm-linear-T8-h2-seed1" not in set(pd.read_csv(out)["run"]) and len(pd.read_csv(out)) == 3
    assert f"scored 0 run(s); {out} holds 3 row(s)" in printed
    assert [line for line in printed.splitlines() if "dropped" in line] == [
        "dropped the row of tiny/nwm-linear-T8-h2-seed1: it is training again; score it when it finishes"]
    score(runs_root, tiny_dataset, out, "--no-eval")  # no row left to drop, none for the other unfinished run
    assert "dropped" not in capsys.readouterr().out


def test_a_table_records_its_runs_root_and_refuses_the_runs_of_another(runs_root, tiny_dataset, tmp_path,
                                                                       monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "scores.csv"
    score(runs_root, tiny_dataset, out, "--no-eval")
    csv = pd.read_csv(out)
    assert list(csv.columns[:2]) == ["run", "runs_root"]
    assert set(trained(csv)["runs_root"]) == {"runs"} and csv.loc[csv["model"] == BASELINE, "runs_root"].isna().all()
    before = out.read_bytes()
    shutil.copytree(runs_root, tmp_path / "other")
    monkeypatch.setattr(produce_scores, "score_run", no_scoring)
    # the same runs under a root one folder down (keys without "tiny/"), and another root's runs
    for other, relative in ((runs_root / "tiny", "runs/tiny"), (tmp_path / "other", "other")):
        with pytest.raises(SystemExit) as exit_info:
            score(other, tiny_dataset, out)
        message = str(exit_info.value.code)
        assert message.startswith(f"error: --out {out} holds the runs of the runs root runs (relative to its "
                                  f"folder), not {relative}:")
        assert "pass --runs-root runs, or" in message and "--out" in message.split(", or")[1]
    assert out.read_bytes() == before
    row = trained(csv).iloc[0].to_dict()  # a writer of another root that checked before the table was written
    with pytest.raises(produce_scores.ScoresError, match="holds the runs of the runs root runs"):
        produce_scores.ScoresFile(out, runs_root=tmp_path / "other").update([row])
    assert out.read_bytes() == before


def test_a_table_moved_with_its_runs_and_a_table_written_before_runs_root_are_taken_on(runs_root, tiny_dataset,
                                                                                        tmp_path):
    out = tmp_path / "scores.csv"
    score(runs_root, tiny_dataset, out, "--no-eval")
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.move(runs_root, moved / "runs")
    shutil.move(out, moved / "scores.csv")
    out = moved / "scores.csv"
    score(moved / "runs", tiny_dataset, out, "--no-eval")  # "runs" beside it still: the same root
    assert len(trained(pd.read_csv(out))) == 3
    one = moved / "runs" / "tiny" / "cnn-depth2-seed0"
    for older in (pd.read_csv(out).drop(columns="runs_root"), pd.read_csv(out).assign(runs_root=None)):
        older.to_csv(out, index=False)  # no runs_root column, or an empty one: the next call's root is its
        produce_scores.main(["--device", "cpu", str(one), "--runs-root", str(moved / "runs"), "--out", str(out),
                             "--data-root", str(tiny_dataset), "--no-eval"])
        csv = pd.read_csv(out)
        assert csv.columns[1] == "runs_root" and len(trained(csv)) == 3 and set(trained(csv)["runs_root"]) == {"runs"}


@pytest.mark.parametrize("named_by", ["$WAVES_SCORES", "the default score table"])
def test_errors_about_the_table_say_how_it_was_named(runs_root, tiny_dataset, tmp_path, monkeypatch, named_by):
    if named_by == "$WAVES_SCORES":
        out = tmp_path / "elsewhere.csv"
        monkeypatch.setenv("WAVES_SCORES", str(out))
    else:
        out = runs_root / "scores.csv"
        monkeypatch.delenv("WAVES_SCORES", raising=False)
    monkeypatch.setattr(produce_scores, "score_run", no_scoring)
    for make in (lambda: out.write_text("step,seconds\n1,2.5\n"), out.mkdir):
        make()
        with pytest.raises(SystemExit) as exit_info:
            produce_scores.main(["--device", "cpu", "--runs-root", str(runs_root), "--data-root", str(tiny_dataset)])
        message = str(exit_info.value.code)
        assert message.startswith(f"error: {named_by} {out} is ") and "--out" in message.split(";")[-1]
        out.unlink() if out.is_file() else None

# -----------------------------------------------------------------------------
# the background-only row and the tables


def test_the_background_only_row_equals_metrics_by_hand(runs_root, tiny_dataset, tmp_path):
    table, _ = score(runs_root, tiny_dataset, tmp_path / "s.csv")
    row = table[table["model"] == BASELINE]
    assert len(row) == 1 and row.index[0] == 0  # first under its dataset
    row = row.iloc[0]
    masks = np.load(tiny_dataset / "tiny" / "test_masks.npy")
    # every pixel predicted background: right exactly on the background pixels, never on a foreground one
    assert row["acc"] == pytest.approx(np.mean([(m == 0).mean() for m in masks]), abs=1e-12)
    assert row["acc_foreground"] == 0 and row["iou_foreground"] == 0
    background_iou = (masks == 0).sum() / masks.size  # background: TP = its pixels, union = every pixel
    present = [c for c in range(3) if (masks == c).any()]  # a class present in the truth has IoU 0
    assert row["iou_class0"] == pytest.approx(background_iou, abs=1e-12)
    assert [row[f"iou_class{c}"] for c in present[1:]] == [0] * (len(present) - 1)
    assert row["miou"] == pytest.approx(background_iou / len(present), abs=1e-12)
    assert pd.isna(row["loss"]) and pd.isna(row["loss_foreground"]) and pd.isna(row["run"])
    assert row["evaluated"] == "computed on the test split" and row["data"] == trained(table)["data"].iloc[0]


def test_tables_show_the_background_only_row_first_and_in_no_mean(runs_root, tiny_dataset, tmp_path):
    scores, _ = score(runs_root, tiny_dataset, tmp_path / "s.csv", "--no-eval")
    table = tables.score_tables(scores)
    assert list(table["model"]) == [BASELINE, "cnn", "nwm"]
    pd.testing.assert_frame_equal(table.drop(index=0).reset_index(drop=True), tables.score_tables(trained(scores)))
    assert table.loc[0, "acc_mean"] == scores.loc[0, "acc"] and pd.isna(table.loc[0, "n_seeds"])
    markdown = tables.to_markdown(table).splitlines()
    assert markdown[2].startswith("| tiny | our recipe") and f"| {BASELINE} |  |  |  |" in markdown[2]
    assert f"{scores.loc[0, 'acc']:.3f} |  |  |  |" in markdown[2]  # no losses, no spread
    assert BASELINE in tables.to_latex(table).splitlines()[4]


def test_the_tables_command_refuses_what_is_not_a_score_table(tmp_path):
    (tmp_path / "other.csv").write_text("step,seconds\n1,2.5\n")
    for scores, says in (("none.csv", "no score table at"), ("other.csv", "--scores")):
        with pytest.raises(SystemExit) as exit_info:
            analysis_cli.main(["tables", "--scores", str(tmp_path / scores), "--out", str(tmp_path / "t")])
        assert says in str(exit_info.value.code)
    assert not (tmp_path / "t").exists()


def test_the_tables_command_writes_the_statistics_and_the_papers_beside_ours(runs_root, tiny_dataset, tmp_path):
    score(runs_root, tiny_dataset, tmp_path / "s.csv", "--no-eval")
    analysis_cli.main(["tables", "--scores", str(tmp_path / "s.csv"), "--out", str(tmp_path / "t")])
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == [
        "paper_comparison.csv", "paper_comparison.md", "scores.csv", "scores.md", "scores.tex"]
    comparison = pd.read_csv(tmp_path / "t" / "paper_comparison.csv")
    assert len(comparison) == len(configs.PAPER_RESULTS)
    assert (comparison["n_seeds"] == 0).all()  # runs on our own tiny data are not the paper's experiment


def test_the_classes_report_agrees_with_the_score_table_and_sums_every_pixel(runs_root, tiny_dataset, tmp_path):
    table, _ = score(runs_root, tiny_dataset, tmp_path / "s.csv")
    row = table[table["run"] == "tiny/nwm-linear-T8-h2-seed0"].iloc[0]
    run_dir = runs_root / "tiny" / "nwm-linear-T8-h2-seed0"
    report = classes.class_report(pretrained.load(run_dir), data_root=tiny_dataset)
    confusion, per_class = report["confusion"].to_numpy(), report["classes"]
    assert confusion.sum() == 16 * 16 * 16 and report["images"] == 16  # every test pixel, once
    assert list(per_class["class"]) == ["background", "small", "large"]
    np.testing.assert_allclose(per_class["iou"], [row[f"iou_class{c}"] for c in range(3)], rtol=1e-12)
    assert list(per_class["pixels"]) == list(confusion.sum(1)) and list(per_class["predicted"]) == list(confusion.sum(0))
    pairs = report["pairs"]
    assert list(pairs["pixels"]) == sorted(pairs["pixels"], reverse=True) and (pairs["true"] != pairs["predicted"]).all()
    assert pairs["pixels"].sum() == confusion.sum() - np.trace(confusion)
    first = pairs.iloc[0]
    assert first["share"] == pytest.approx(first["pixels"] / report["confusion"].loc[first["true"]].sum())


def test_the_classes_command_checks_every_run_before_predicting_and_writes_per_run(runs_root, tiny_dataset, tmp_path,
                                                                                   capsys):
    good = runs_root / "tiny" / "cnn-depth2-seed0"
    unfinished = runs_root / "tiny" / "nwm-linear-T8-h2-seed2"
    out = ["--data-root", str(tiny_dataset), "--figures", str(tmp_path / "f"), "--tables", str(tmp_path / "t")]
    with pytest.raises(SystemExit) as exit_info:
        analysis_cli.main(["classes", str(good), str(unfinished), *out])
    assert "has not finished an epoch" in str(exit_info.value.code)
    assert not (tmp_path / "t").exists() and not (tmp_path / "f").exists()  # nothing done for the good run either
    with pytest.raises(SystemExit) as exit_info:  # its best and its last checkpoint: two reports of one name
        analysis_cli.main(["classes", str(good), str(good / runs.LAST), *out])
    assert "are both run tiny/cnn-depth2-seed0" in str(exit_info.value.code)
    other_data = runs_root / "tiny" / "other-data"
    shutil.copytree(good, other_data)
    config = runs.load_json(other_data / runs.CONFIG)
    config["data"]["sha256"] = "0" * 64
    runs.save_json(config, other_data / runs.CONFIG)
    with pytest.raises(SystemExit) as exit_info:
        analysis_cli.main(["classes", str(other_data), *out])
    assert "was trained on other tiny data" in str(exit_info.value.code) and "--data-root" in str(exit_info.value.code)
    assert not (tmp_path / "t").exists() and not (tmp_path / "f").exists()
    analysis_cli.main(["classes", str(good), "--n", "4", *out])
    out = capsys.readouterr().out
    assert "tiny/cnn-depth2-seed0, test split, 4 images, float32" in out
    assert f"{good}: 4 test images predicted" in out  # not a terminal: a plain line per run instead of a bar
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == [
        "classes_tiny_cnn-depth2-seed0_test.csv", "confusion_tiny_cnn-depth2-seed0_test.csv"]
    assert (tmp_path / "f" / "confusion_tiny_cnn-depth2-seed0_test.png").is_file()
    assert pd.read_csv(tmp_path / "t" / "confusion_tiny_cnn-depth2-seed0_test.csv", index_col=0).to_numpy().sum() \
        == 4 * 16 * 16
