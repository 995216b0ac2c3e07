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


# -----------------------------------------------------------------------------
# what a run is: its identity and its settings, each written once in runs.py


@pytest.mark.parametrize("model, settings, name, variant, columns", [
    ("nwm", dict(readout="fft"), "tetrominoes/nwm-fft-T100-h2-seed3", "fft",
     dict(readout="fft", T=100, features_per_channel=None, depth=None, width=None, hidden_channels=2)),
    ("lstm", dict(train_size=500), "tetrominoes/lstm-linear-T20-h2-n500-seed3", "linear",
     dict(readout="linear", T=20, features_per_channel=None, depth=None, width=None, hidden_channels=2)),
    ("cnn", dict(depth=16), "tetrominoes/cnn-depth16-seed3", "depth 16",
     dict(readout=None, T=None, features_per_channel=49, depth=16, width=None, hidden_channels=2)),
    ("unet", dict(width=3), "tetrominoes/unet-width3-seed3", "width 3",
     dict(readout=None, T=None, features_per_channel=None, depth=None, width=3, hidden_channels=None)),
])
def test_a_runs_name_variant_and_score_columns_come_from_its_models_keywords(model, settings, name, variant, columns):
    from configs import paper_settings
    config = {**paper_settings("tetrominoes", model), "dataset": "tetrominoes", "model": model, "seed": 3,
              "train_size": None, **settings}
    assert runs.default_run_name(config) == name
    assert runs.variant(config) == variant
    assert runs.model_columns(config) == columns
    assert runs.steps(config) == (f", T {config['T']}" if model in ("nwm", "lstm") else "")


def test_every_train_py_setting_is_defining_budget_or_how_the_run_computes():
    import train
    _, args = train.parse_args(["--device", "cpu"])
    settings = vars(args)
    assert set(runs.BUDGET) | set(runs.NOT_DEFINING) | set(runs.INVOCATION) <= settings.keys()
    assert set(runs.OUTCOMES) <= set(runs.NOT_DEFINING)
    # what open_run compares: the keys every stored run (results/runs, results/in_progress) was written with
    assert set(runs.run_defining(settings)) == {
        "dataset", "train_size", "val_size", "model", "readout", "T", "dt", "c_mid", "hidden_channels",
        "readout_width", "readout_depth", "depth", "width", "epochs", "min_epochs", "patience", "tolerance", "lr",
        "batch_size", "seed", "max_minutes"}


def test_config_json_is_written_whole_once_per_invocation_with_its_budget_change(tmp_path):
    invocation = dict(started="t0", first_epoch=1, git={"commit": None, "dirty": None}, command="python train.py",
                      device_name="cpu", precision="float32", threads=1, bf16_coupling=False)
    first = dict(model="nwm", epochs=2, resume=None, restart=False, quickstart=False, stop_after_minutes=None,
                 amp=False)
    runs.write_config(tmp_path, invocation, dict(precision="float32", compile="off"), first)
    config = runs.load_json(tmp_path / runs.CONFIG)
    assert not set(runs.INVOCATION) & config.keys()  # how one command was invoked is not kept
    # each invocation's record keeps what it computed with
    assert config["command"] == "python train.py" and config["invocations"] == [dict(invocation, compile="off")]
    change = {"after_epoch": 2, "changed": {"epochs": [2, 4]}, "time": "t1"}
    runs.write_config(tmp_path, dict(invocation, first_epoch=3), dict(precision="float32", compile="on"),
                      budget_change=change)
    config = runs.load_json(tmp_path / runs.CONFIG)
    assert config["epochs"] == 4 and config["budget_changes"] == [change] and config["compile"] == "on"
    assert [(i["first_epoch"], i["compile"]) for i in config["invocations"]] == [(1, "off"), (3, "on")]


def test_train_py_takes_the_model_keywords_ranges_that_build_model_checks():
    import train
    from models import AT_LEAST, build_model
    parser = train.build_parser()
    for key, least in AT_LEAST.items():
        flag = "--" + key.replace("_", "-")
        if any(flag in action.option_strings for action in parser._actions):
            with pytest.raises(SystemExit):
                parser.parse_args([flag, str(least - 1)])
            assert getattr(parser.parse_args([flag, str(least)]), key) == least
        with pytest.raises(ValueError, match=f"^{key} must be a whole number >= {least}"):
            build_model("nwm", **{key: least - 1})
