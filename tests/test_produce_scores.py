"""produce_scores.py: one row per finished run, idempotent, unfinished and broken runs listed."""
import numpy as np
import pandas as pd
import pytest

import produce_scores
import runs
import train
from data_scripts import common


@pytest.fixture
def runs_root(run_train, tmp_path, monkeypatch):
    # one epoch each, in float32 (conftest.FAST: --amp off), as produce_scores.py re-evaluates
    root = tmp_path / "runs"
    run_train(root, "--epochs", "1", "--seed", "0")
    run_train(root, "--epochs", "1", "--seed", "1")
    run_train(root, "--epochs", "1", "--model", "cnn", "--depth", "2")
    # a run killed during its first epoch: config.json but no test metrics
    monkeypatch.setattr(train, "train_one_epoch", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(SystemExit):
        run_train(root, "--epochs", "1", "--seed", "2")
    return root


def score(runs_root, data_root, out, *extra):
    return produce_scores.main(["--device", "cpu", "--runs-root", str(runs_root), "--data-root", str(data_root),
                                "--out", str(out), *extra])


def test_one_row_per_finished_run_and_unfinished_runs_listed(runs_root, tiny_dataset, tmp_path, capsys):
    out = tmp_path / "scores.csv"
    table, skipped = score(runs_root, tiny_dataset, out)
    csv = pd.read_csv(out)
    assert len(csv) == 3
    assert set(csv["model"]) == {"nwm", "cnn"} and set(csv["seed"]) == {0, 1}
    for column in ["dataset", "model", "readout", "T", "depth", "width", "hidden_channels", "seed",
                   "num_params", "epochs", "acc", "acc_foreground", "iou_foreground", "loss",
                   "loss_foreground", "miou"]:
        assert column in csv.columns
    cnn = csv[csv["model"] == "cnn"].iloc[0]
    assert cnn["depth"] == 2 and pd.isna(cnn["readout"])
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
    produce_scores.main(["--device", "cpu", str(one), "--data-root", str(tiny_dataset), "--out", str(out)])
    assert out.read_text() == first


def test_reevaluation_matches_the_stored_test_metrics(runs_root, tiny_dataset, tmp_path):
    evaluated, _ = score(runs_root, tiny_dataset, tmp_path / "a.csv")
    stored, _ = score(runs_root, tiny_dataset, tmp_path / "b.csv", "--no-eval")
    for column in ["acc", "acc_foreground", "iou_foreground", "loss", "loss_foreground", "miou"]:
        assert evaluated[column].tolist() == pytest.approx(stored[column].tolist(), rel=1e-5)


def test_broken_run_is_skipped_with_a_reason(runs_root, tiny_dataset, tmp_path):
    victim = next(d for d in runs.find_runs(runs_root) if runs.is_finished(d))
    (victim / runs.CHECKPOINT).unlink()
    table, skipped = score(runs_root, tiny_dataset, tmp_path / "s.csv")
    assert len(table) == 2
    reasons = dict((d.name, why) for d, why in skipped)
    assert "broken" in reasons[victim.name]


def test_runs_on_other_data_keep_their_stored_metrics_and_are_labelled(runs_root, tiny_dataset, tmp_path):
    table, _ = score(runs_root, tiny_dataset, tmp_path / "a.csv")
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
    assert all(e.startswith("stored (trained on other data") for e in again["evaluated"])
    for run in again["run"]:
        stored = runs.load_json(runs_root / run / runs.TEST_METRICS)
        assert again.set_index("run").loc[run, "iou_foreground"] == stored["iou_foreground"]


def test_a_log_gets_one_plain_line_per_run(runs_root, tiny_dataset, tmp_path, capsys):
    capsys.readouterr()  # (stderr is not a terminal under capsys, as in a log)
    score(runs_root, tiny_dataset, tmp_path / "scores.csv", "--no-eval")
    captured = capsys.readouterr()
    assert "\r" not in captured.out + captured.err
    assert [line.split()[0] for line in captured.out.splitlines() if line.startswith("[")] == ["[1/4]", "[2/4]",
                                                                                              "[3/4]", "[4/4]"]
    score(runs_root, tiny_dataset, tmp_path / "scores.csv", "--no-eval", "--no-progress")
    assert not [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
