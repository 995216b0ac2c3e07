"""runs.py's per-epoch record: what an epoch writes into the run directory, in which order, and the
row of metrics.csv with what the epoch ran on. (Run directories under faults: tests/test_reliability.py.)"""
import pytest
import torch

import runs
from conftest import tiny_model
from metrics import METRIC_NAMES


def test_an_epoch_writes_last_pt_first_and_the_checkpoint_only_when_it_improved(tmp_path, monkeypatch):
    model = tiny_model()
    optimizer, generator = torch.optim.Adam(model.parameters()), torch.Generator().manual_seed(0)
    metrics = dict.fromkeys(METRIC_NAMES, 0.5)
    hardware = runs.hardware("cpu", amp=False)
    assert hardware == {"device_name": hardware["device_name"], "precision": "float32",
                        "threads": torch.get_num_threads()}
    state = dict(epoch=0, history=[], best_val_loss=float("inf"), best_epoch=None, since_improvement=0)
    written, real_write = [], runs._write_bytes

    def noting(path, data):
        written.append(path.name.split(".")[0])
        real_write(path, data)

    monkeypatch.setattr(runs, "_write_bytes", noting)
    for epoch, improved in ((1, True), (2, False)):
        state.update(epoch=epoch, best_epoch=1)
        state["history"].append(runs.epoch_row(epoch, metrics, metrics, 1e-3, 0.25, improved, hardware))
        runs.save_epoch(tmp_path, state, model, optimizer, generator, metrics, improved)
    assert written == ["last", "checkpoint", "metrics", "last", "metrics"]
    assert runs.load_torch(tmp_path / runs.CHECKPOINT)["epoch"] == 1
    assert runs.load_torch(tmp_path / runs.LAST)["state"]["epoch"] == 2
    rows = runs.load_metrics(tmp_path)
    assert [(r["epoch"], r["best"], r["precision"]) for r in rows] == [("1", "1", "float32"), ("2", "0", "float32")]


def test_metrics_of_a_run_continued_by_newer_code_keep_every_row(tmp_path):
    # rows written before a column existed stay, with that column empty
    old_row = {"epoch": 1, "train_loss": 0.5}
    new_row = {"epoch": 2, "train_loss": 0.4, "device_name": "cpu", "threads": 2}
    runs.save_metrics([old_row, new_row], tmp_path / runs.METRICS)
    rows = runs.load_metrics(tmp_path)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert rows[0]["device_name"] == "" and rows[1]["threads"] == "2"


def test_a_file_that_is_not_a_checkpoint_is_called_so_never_an_index_error(tmp_path):
    model = tiny_model()
    runs.save_json({"run_name": "r", "model": "nwm", "in_channels": 3, "num_classes": 3, "T": 6, "c_mid": 4,
                    "readout_width": 8}, tmp_path / runs.CONFIG)
    runs.save_metrics([{"epoch": 1, "train_loss": 0.5}], tmp_path / runs.METRICS)
    runs.save_json({"acc": 0.5}, tmp_path / runs.TEST_METRICS)
    (tmp_path / "text.pt").write_text("hello, this file was overwritten with text")
    (tmp_path / "copy.pt").write_bytes((tmp_path / runs.METRICS).read_bytes())  # a CSV under a checkpoint's name
    runs.save_torch(torch.zeros(3), tmp_path / "tensor.pt")
    runs.save_torch({"model": tiny_model("lstm").state_dict()}, tmp_path / "other_model.pt")
    runs.save_torch({"model": model.state_dict(), "epoch": 1}, tmp_path / runs.CHECKPOINT)
    says = {runs.CONFIG: "config.json is the run's settings, not a checkpoint",
            runs.METRICS: "metrics.csv is the run's per-epoch metrics, not a checkpoint",
            runs.TEST_METRICS: "test_metrics.json is the run's test metrics, not a checkpoint",
            "text.pt": "text.pt is damaged or not a checkpoint", "copy.pt": "copy.pt is damaged or not a checkpoint",
            "tensor.pt": "tensor.pt holds no model weights",
            "other_model.pt": "other_model.pt holds weights of another model than the one"}
    for name, message in says.items():
        with pytest.raises(runs.DamagedFile, match=message):
            runs.load_model(tmp_path, which=name)
    assert runs.load_model(tmp_path)[1]["model"] == "nwm"
