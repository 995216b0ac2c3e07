"""Figures and analyses: the analysis package, animate.py, and every notebook run headless.

The notebooks run in their own kernel process, so they get real (tiny) datasets and
runs, made once for this module: 32/8/8-image Tetrominoes and Polygons, and 8-step NWM
and LSTM runs trained for one epoch.
"""
import json
import math
import shutil

import nbformat
import numpy as np
import pandas as pd
import pytest
import torch
from nbclient import NotebookClient
from PIL import Image

import animate
import plotting
import produce_scores
import runs
import train
from analysis import __main__ as analysis_cli
from analysis import curves, receptive_fields, squares, tables
from analysis.animation import make_animation
from conftest import FAST, REPO
from data_scripts import create_polygons, create_tetrominoes

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))

# -----------------------------------------------------------------------------
# score tables


def test_score_tables_statistics_over_seeds():
    scores = pd.DataFrame({
        "dataset": ["tetrominoes"] * 5,
        "model": ["nwm", "nwm", "nwm", "cnn", "cnn"],
        "readout": ["linear", "linear", "linear", None, None],
        "depth": [None, None, None, 2, 2],
        "width": [None] * 5,
        "T": [100, 100, 100, 100, 100],
        "num_params": [176124, 176124, 176124, 5000, 5000],
        "iou_foreground": [0.9, 0.8, 1.0, 0.1, 0.3],
        "acc": [0.5, 0.6, 0.7, 0.2, 0.2],
    })
    table = tables.score_tables(scores).set_index("variant")
    nwm, cnn = table.loc["linear"], table.loc["depth 2"]
    assert nwm["n_seeds"] == 3 and nwm["num_params"] == 176124
    assert nwm["iou_foreground_mean"] == pytest.approx(0.9)
    assert nwm["iou_foreground_std"] == pytest.approx(0.1)  # sample std (ddof 1)
    assert (nwm["iou_foreground_min"], nwm["iou_foreground_median"], nwm["iou_foreground_max"]) == (0.8, 0.9, 1.0)
    assert cnn["n_seeds"] == 2 and cnn["acc_median"] == pytest.approx(0.2)
    assert cnn["iou_foreground_mean"] == pytest.approx(0.2)
    markdown, latex = tables.to_markdown(table.reset_index()), tables.to_latex(table.reset_index())
    assert "0.900 ± 0.100" in markdown and "0.800 / 0.900 / 1.000" in markdown
    assert "| linear, T 100 |" in markdown and "| depth 2 |" in markdown  # no T for the CNN
    assert r"0.900 $\pm$ 0.100" in latex and r"\toprule" in latex


def test_score_tables_keep_cnns_of_other_feature_counts_apart():
    scores = pd.DataFrame({  # as produce_scores.py writes them: the CNN's T as its features per channel
        "dataset": ["tetrominoes"] * 4, "model": ["cnn"] * 3 + ["lstm"], "readout": [None] * 3 + ["linear"],
        "T": [None] * 3 + [20], "features_per_channel": [49, 49, 9, None], "depth": [8, 8, 8, None],
        "hidden_channels": [2] * 4, "num_params": [1000, 1000, 900, 2000], "iou_foreground": [0.1, 0.3, 0.5, 0.7]})
    table = tables.score_tables(scores)
    assert [(r.model, r.features_per_channel, r.n_seeds) for r in table.itertuples()] == [
        ("cnn", 9, 1), ("cnn", 49, 2), ("lstm", pd.NA, 1)]
    markdown = tables.to_markdown(table)
    assert markdown.count("| depth 8 |") == 2 and "| linear, T 20 |" in markdown


def test_score_tables_keep_runs_of_other_sizes_apart():
    scores = pd.DataFrame({  # the same columns, but one run with another --c-mid: another number of parameters
        "dataset": ["tetrominoes"] * 3, "model": ["nwm"] * 3, "readout": ["linear"] * 3, "T": [100] * 3,
        "hidden_channels": [2] * 3, "num_params": [176124, 176124, 90000], "iou_foreground": [0.8, 1.0, 0.1]})
    table = tables.score_tables(scores)
    assert [(r.num_params, r.n_seeds, r.iou_foreground_mean) for r in table.itertuples()] == [
        (90000, 1, pytest.approx(0.1)), (176124, 2, pytest.approx(0.9))]
    assert list(table.columns[:8]) == ["dataset", "model", "variant", "T", "hidden_channels", "n_seeds", "num_params",
                                       "iou_foreground_mean"]


def test_paper_comparison_takes_only_the_papers_configuration_on_the_papers_data():
    def run(name, iou, **columns):
        return {**dict(run=name, dataset="multi_mnist", model="unet", data="paper", width=4, epochs_run=30, seed=0,
                       num_params=122071, iou_foreground=iou, acc_foreground=iou + 0.01), **columns}
    scores = pd.DataFrame([
        run("a", 0.90), run("b", 0.80, seed=1), run("c", 0.10, train_size=128),  # a subset: not the paper's recipe
        run("d", 0.20, data="our recipe"), run("e", 0.30, width=3, epochs_run=12, num_params=68834),
        run("copy-of-a", 0.40),  # seed 0 again: one run scored under two names counts once
        run("g", 0.50, num_params=61852),  # another size: a setting the table has no column for changed
        run("h", 0.0, width=5, num_params=190456), run("i", 0.6, width=5, num_params=190456, seed=3),  # h collapsed
        dict(run=None, dataset="multi_mnist", model="background only", data="paper", iou_foreground=0.0),
        dict(run="f", dataset="tetrominoes", model="nwm", data="paper", readout="linear", T=50, hidden_channels=2,
             seed=0, num_params=176124, epochs_run=100, iou_foreground=0.5, acc_foreground=0.6)])  # T 50, not 100
    table = tables.paper_comparison(scores).set_index(["dataset", "model", "variant"])
    width4, width3 = table.loc[("multi_mnist", "unet", "width 4")], table.loc[("multi_mnist", "unet", "width 3")]
    assert width4["n_seeds"] == 2 and width4["epochs"] == "30" and width4["num_params"] == 122071
    assert width4["iou_foreground_mean"] == pytest.approx(0.85)
    assert width4["iou_foreground_std"] == pytest.approx(0.0707107)
    assert (width4["paper_iou_foreground_mean"], width4["paper_acc_foreground_mean"]) == (0.96, 0.97)
    assert width3["n_seeds"] == 1 and width3["epochs"] == "12" and pd.isna(width3["iou_foreground_std"])
    nwm = table.loc[("multi_mnist", "nwm", "linear")]  # no run: the paper's numbers and the model's size
    assert nwm["n_seeds"] == 0 and nwm["num_params"] == 54855 and pd.isna(nwm["iou_foreground_mean"])
    assert table.loc[("tetrominoes", "nwm", "linear"), "n_seeds"] == 0
    markdown = tables.comparison_markdown(table.reset_index())
    assert "| multi_mnist | unet | width 4 | 122,071 | 2 | 30 | 0.850 ± 0.071 | 0.96 | 0.860 ± 0.071 | 0.97 |" \
        in markdown
    assert "| multi_mnist | nwm | linear | 54,855 | 0 |  |  | 0.93 ± 0.01 |  | 0.96 ± 0.01 |" in markdown
    width5 = table.loc[("multi_mnist", "unet", "width 5")]  # the collapsed seed counts in the mean, and is named
    assert width5["n_seeds"] == 2 and width5["collapsed_seeds"] == "0" and width4["collapsed_seeds"] == ""
    assert "| width 5 | 190,456 | 2 (seed 0 at fg IoU 0) | 30 | 0.300 ± 0.424 |" in markdown
    fig = plotting.parameters_plot(table.reset_index(), "multi_mnist")
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert labels == ["nwm, paper", "unet, paper", "unet, ours"]


def test_the_tables_command_names_where_its_missing_score_table_came_from(tmp_path, monkeypatch):
    def refusal(*args):
        with pytest.raises(SystemExit) as exit_info:
            analysis_cli.main(["tables", *args, "--out", str(tmp_path / "t")])
        return str(exit_info.value.code)
    named = tmp_path / "my" / "scores.csv"
    said = refusal("--scores", str(named))
    assert f"no score table at {named} (--scores); make it with: python produce_scores.py --out {named}" in said
    assert "pass --scores" not in said
    monkeypatch.setenv("WAVES_SCORES", str(tmp_path / "env.csv"))
    assert "(from $WAVES_SCORES); make it with: python produce_scores.py (or pass --scores)" in refusal()
    monkeypatch.delenv("WAVES_SCORES")
    monkeypatch.setenv("WAVES_RUNS_ROOT", str(tmp_path / "runs"))
    said = refusal()
    assert f"no score table at {tmp_path / 'runs' / 'scores.csv'} (the default, <runs root>/scores.csv)" in said
    assert "make it with: python produce_scores.py (or pass --scores)" in said
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize("name", ["scores.csv", "paper_comparison.md"])
def test_the_tables_command_refuses_to_write_over_the_score_table_it_reads(tmp_path, name):
    scores = tmp_path / name
    pd.DataFrame([dict(run="a", dataset="multi_mnist", model="unet", data="paper", width=4, epochs_run=30, seed=0,
                       num_params=122071, iou_foreground=0.9, acc_foreground=0.91)]).to_csv(scores, index=False)
    before = scores.read_bytes()
    (tmp_path / "sub").mkdir()
    with pytest.raises(SystemExit) as exit_info:  # the same file, spelled another way
        analysis_cli.main(["tables", "--scores", str(tmp_path / "sub" / ".." / name), "--out", str(tmp_path)])
    assert f"holds the score table read ({tmp_path / 'sub' / '..' / name}) as {name}, which the tables would " \
           f"overwrite" in str(exit_info.value.code)
    assert "choose another --out" in str(exit_info.value.code)
    assert scores.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "sub"])
    analysis_cli.main(["tables", "--scores", str(scores), "--out", str(tmp_path / "t")])
    # the files the check guards are the files the command writes
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == sorted(tables.TABLES_COMMAND_FILES)

# -----------------------------------------------------------------------------
# square-area theory


def test_predicted_frequency_matches_the_spec_periods():
    # docs/methods.md, "Square-area theory": the fundamental's period is 72 steps at s = 4 and 467 at s = 32
    assert 1 / squares.predicted_frequency(4) == pytest.approx(72, abs=0.5)
    assert 1 / squares.predicted_frequency(32) == pytest.approx(467, abs=0.5)


def test_measured_frequency_of_a_pure_sine_is_sub_bin_exact():
    f = 0.0123
    assert squares.measured_frequency(np.sin(2 * np.pi * f * np.arange(500))) == pytest.approx(f, rel=1e-3)


def test_square_frequency_matches_the_grid_theory():
    theory = squares.square_theory(sides=(4, 7, 10), T=1500)
    assert (theory["relative_error"] < 0.02).all()


def test_area_classifier_beats_chance():
    result = squares.area_classifier(sides=range(4, 10), n_bins=2, T=300, n_samples=60, steps=())
    assert result["accuracy"] > result["chance"]
    assert result["confusion"].sum() == len(result["labels"])

# -----------------------------------------------------------------------------
# receptive fields


def test_radius_of_mass_on_synthetic_maps():
    erf = np.zeros((21, 21))
    erf[10, 10] = 1.0
    assert receptive_fields.radius_of_mass(erf, (10, 10)) == 0
    erf[10, 15] = 9.0  # 90% of the mass 5 pixels away
    assert receptive_fields.radius_of_mass(erf, (10, 10), 0.9) == 5
    assert receptive_fields.radius_of_mass(erf, (10, 10), 0.1) == 0
    assert math.isnan(receptive_fields.radius_of_mass(np.zeros((5, 5)), (2, 2)))
    rng = np.random.default_rng(0)  # all of the mass: the farthest pixel that holds any, whatever the rounding
    for _ in range(50):
        erf = rng.random((9, 9))
        assert receptive_fields.radius_of_mass(erf, (4, 4), 1.0) == np.hypot(4, 4)


def test_cnn_erf_stays_inside_its_window():
    depth, pixel = 3, (10, 10)
    config = dict(in_channels=3, num_classes=6, c_mid=8, hidden_channels=2)
    erf, dead = receptive_fields.mean_erf("cnn", config, receptive_fields.probe_images(n=2, size=21), pixel, seeds=(0, 1), depth=depth)
    assert dead < 2 and erf.sum() > 0
    window = np.zeros_like(erf, bool)
    window[pixel[0] - depth:pixel[0] + depth + 1, pixel[1] - depth:pixel[1] + depth + 1] = True
    assert (erf[~window] == 0).all()


def test_nwm_erf_radius_grows_with_steps():
    table, _ = receptive_fields.erf_radii(receptive_fields.probe_images(n=1, size=32), (16, 16), nwm_steps=(2, 20, 80),
                                  cnn_depths=(), seeds=(0,))
    radii = table["radius"].to_numpy()
    assert radii[0] < radii[1] < radii[2]

# -----------------------------------------------------------------------------
# tiny real datasets and runs, for the animation and the notebooks


@pytest.fixture(scope="module")
def figure_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("figures")
    data, runs_root = root / "data", root / "runs"
    for create in (create_tetrominoes, create_polygons):
        create.main(["--data-root", str(data), "--train", "32", "--val", "8", "--test", "8"])
    for dataset, model, readout in (("tetrominoes", "nwm", "linear"), ("tetrominoes", "lstm", "linear"),
                                    ("tetrominoes", "nwm", "fft"), ("polygons", "nwm", "linear")):
        train.main([*FAST, "--hidden-channels", "2", "--epochs", "1", "--batch-size", "8", "--no-progress",
                    "--dataset", dataset, "--model", model, "--readout", readout,
                    "--data-root", str(data), "--runs-root", str(runs_root)])
    scores = root / "scores.csv"
    produce_scores.main(["--device", "cpu", "--runs-root", str(runs_root), "--out", str(scores), "--no-eval"])
    return dict(root=root, data=data, runs=runs_root, scores=scores)


@pytest.mark.slow
def test_animation_has_one_frame_per_step(figure_inputs, tmp_path):
    run = runs.find_run(figure_inputs["runs"], "tetrominoes", "nwm", readout="linear")
    gif, png = make_animation(run, "test", 1, 1, tmp_path, figure_inputs["data"])
    assert Image.open(gif).n_frames == 8 and png.is_file()
    gif, _ = make_animation(run, "test", 1, 1, tmp_path, figure_inputs["data"], stride=3)
    assert Image.open(gif).n_frames == 3


@pytest.mark.slow
def test_trained_receptive_fields_are_measured_on_each_runs_own_data(figure_inputs, tmp_path, capsys):
    chosen = [runs.find_run(figure_inputs["runs"], dataset, "nwm", readout="linear")
              for dataset in ("tetrominoes", "polygons")]
    table = receptive_fields.trained_radii(chosen, n=2, data_root=figure_inputs["data"])
    assert list(table["dataset"]) == ["tetrominoes", "polygons"] and list(table["pixel"]) == [(32, 32)] * 2
    # 8 steps of a 3x3 coupling reach 8 pixels, the 3x3 encoder and readout a pixel more each
    assert ((table["radius"] > 0) & (table["radius"] <= math.sqrt(2) * 10)).all()
    (tmp_path / "unfinished").mkdir()
    shutil.copy(chosen[0] / runs.CONFIG, tmp_path / "unfinished" / runs.CONFIG)
    with pytest.raises(SystemExit) as exit_info:  # refused before any model is loaded
        analysis_cli.main(["erf", str(chosen[0]), str(tmp_path / "unfinished"), "--data-root", str(figure_inputs["data"])])
    assert "has not finished an epoch" in str(exit_info.value.code)
    threads = torch.get_num_threads()
    try:
        analysis_cli.main(["erf", str(chosen[1]), "--n", "2", "--data-root", str(figure_inputs["data"]), "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    assert "polygons/nwm-linear-T8-h2-seed0" in capsys.readouterr().out


@pytest.mark.slow
def test_waves_command_writes_numbers_figures_and_sounds(figure_inputs, tmp_path, capsys):
    chosen = [runs.find_run(figure_inputs["runs"], "tetrominoes", model, readout="linear") for model in ("nwm", "lstm")]
    threads = torch.get_num_threads()
    try:
        analysis_cli.main(["waves", *map(str, chosen), "--n", "3", "--data-root", str(figure_inputs["data"]),
                           "--figures", str(tmp_path / "figures"), "--tables", str(tmp_path / "tables"),
                           "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out  # not a terminal: a plain line per run instead of a bar
    assert all(f"{run}: 3 test images measured" in out for run in chosen)
    table = pd.read_csv(tmp_path / "tables" / "waves.csv")
    assert set(table["run"]) == {f"tetrominoes/{run.name}" for run in chosen}
    assert (table.loc[table["objects"] == "all", "n"] > 0).all()
    assert (tmp_path / "figures" / "waves_maps_tetrominoes.png").is_file()
    sounds = sorted((tmp_path / "sounds").glob("*.wav"))
    assert {p.name.split("-")[0] for p in sounds} == {"tetrominoes_nwm", "tetrominoes_lstm"}
    assert all(p.stat().st_size < 200_000 for p in sounds)


@pytest.mark.slow
def test_waves_command_checks_every_run_and_its_data_before_measuring(figure_inputs, tmp_path, monkeypatch):
    from analysis import wave_report
    monkeypatch.setattr(wave_report, "measure_run", lambda *a, **k: pytest.fail("measured before the checks"))
    nwm = runs.find_run(figure_inputs["runs"], "tetrominoes", "nwm", readout="linear")
    common = ["--data-root", str(figure_inputs["data"]), "--figures", str(tmp_path / "figures")]
    with pytest.raises(SystemExit, match="nor a run directory with config.json and checkpoint.pt"):
        analysis_cli.main(["waves", str(nwm), str(tmp_path), *common])
    with pytest.raises(SystemExit, match="tetrominoes/cnn holds a cnn, which has no hidden state over time"):
        analysis_cli.main(["waves", str(nwm), "tetrominoes/cnn", *common])  # a shipped name, not recurrent
    with pytest.raises(SystemExit, match="was trained on other tetrominoes data"):  # a shipped name is resolved
        analysis_cli.main(["waves", str(nwm), "tetrominoes/nwm", *common])
    with pytest.raises(SystemExit, match="not found"):
        analysis_cli.main(["waves", str(nwm), *common[2:], "--data-root", str(tmp_path / "empty")])
    other = shutil.copytree(nwm, tmp_path / "other-data")  # the same run, as if trained on other data
    config = runs.load_json(other / runs.CONFIG)
    config["data"]["sha256"] = "0" * 64
    runs.save_json(config, other / runs.CONFIG)
    with pytest.raises(SystemExit, match="was trained on other tetrominoes data"):
        analysis_cli.main(["waves", str(nwm), str(other), *common])


def test_waves_command_refuses_two_runs_of_one_name_before_measuring(run_train, tiny_dataset, tmp_path, monkeypatch):
    from analysis import wave_report
    monkeypatch.setattr(wave_report, "measure_run", lambda *a, **k: pytest.fail("measured before the checks"))
    run_train(tmp_path / "runs", "--epochs", "1", "--run-name", "r")
    copy = shutil.copytree(tmp_path / "runs" / "r", tmp_path / "elsewhere" / "r")  # its rows would join r's
    for second in (copy, copy / runs.LAST):  # another folder, or the same run at another checkpoint
        with pytest.raises(SystemExit) as exit_info:
            analysis_cli.main(["waves", str(tmp_path / "runs" / "r"), str(second), "--data-root", str(tiny_dataset),
                               "--figures", str(tmp_path / "figures"), "--tables", str(tmp_path / "tables")])
        assert f"{tmp_path / 'runs' / 'r'} and {second} are both run r" in str(exit_info.value.code)
        assert "measure them in two calls" in str(exit_info.value.code)
    assert not (tmp_path / "figures").exists() and not (tmp_path / "tables").exists()


def test_notebooks_are_committed_with_their_figures():
    # the .ipynb files are the source, committed with the outputs they made from the shipped runs
    assert len(NOTEBOOKS) == 7
    for path in NOTEBOOKS:
        outputs = [o for cell in nbformat.read(path, as_version=4).cells for o in cell.get("outputs", [])]
        assert any("image/png" in o.get("data", {}) for o in outputs), path.name
        assert not any(o.get("output_type") == "error" for o in outputs), path.name


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_headless(path, figure_inputs, monkeypatch):
    out = figure_inputs["root"] / "out"
    monkeypatch.setenv("WAVES_SCORES", str(figure_inputs["scores"]))
    monkeypatch.setenv("WAVES_FIGURE_RUNS", str(figure_inputs["runs"]))
    monkeypatch.setenv("WAVES_DATA_ROOT", str(figure_inputs["data"]))
    monkeypatch.setenv("WAVES_FIGURES", str(out / "figures"))
    monkeypatch.setenv("WAVES_TABLES", str(out / "tables"))
    monkeypatch.setenv("WAVES_QUICK", "1")
    committed = path.read_bytes()
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    assert path.read_bytes() == committed  # executed in memory: the committed file is untouched
    text = "".join(o.get("text", "") for c in notebook.cells for o in c.get("outputs", []))
    missing = [line for line in text.splitlines() if "missing" in line]
    # the fixture trains no MNIST or Multi-MNIST run (both contain "mnist") and no Polygons LSTM: every other
    # part had its inputs
    assert all("mnist" in line or "lstm run on polygons" in line for line in missing), missing
    expected = {"scores_tables": ["figures/scores_tetrominoes.png", "tables/scores.md", "figures/params_multi_mnist.png",
                                  "tables/paper_comparison.md"],
                "wave_animations": ["figures/animations/tetrominoes_lstm-linear-T8-h2-seed0-test0-ch0.gif"],
                "fig_lstm_vs_nwm": ["figures/lstm_vs_nwm.png"],
                "square_area_theory": ["figures/square_area_theory.png"],
                "multi_polygon": ["figures/polygons_confusion.png"],
                "receptive_field": ["figures/erf_radius.png", "figures/erf_maps.png"],
                "wave_analysis": ["figures/waves_maps_tetrominoes.png", "figures/waves_comparison.png",
                                  "figures/waves_spectrogram_polygons_nwm.png", "tables/waves.csv"]}[path.stem]
    for name in expected:
        assert (out / name).is_file(), name
    if path.stem == "wave_analysis":  # a sound per class present in the few test images
        for prefix in ("tetrominoes_nwm", "tetrominoes_lstm", "polygons_nwm"):
            assert list((out / "sounds").glob(f"{prefix}-*.wav")), prefix


@pytest.mark.slow
def test_notebook_skips_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("WAVES_SCORES", str(tmp_path / "none.csv"))
    monkeypatch.setenv("WAVES_FIGURE_RUNS", str(tmp_path / "no_runs"))
    monkeypatch.setenv("WAVES_FIGURES", str(tmp_path / "figures"))
    for name in ("scores_tables", "fig_lstm_vs_nwm"):
        notebook = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
        NotebookClient(notebook, timeout=120, kernel_name="python3",
                       resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
        text = "".join(o.get("text", "") for c in notebook.cells for o in c.get("outputs", []))
        assert "missing" in text


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["--index", "-1"], "argument --index: must be at least 0, got -1"),
    (["--index", "8"], "--index 8: the tetrominoes test split holds 8 images (0..7)"),
    (["--channel", "7"], "--channel 7: the model has 2 hidden channels (0..1)"),
    (["--stride", "0"], "argument --stride: must be at least 1, got 0"),
])
def test_animate_refuses_bad_arguments_by_flag(figure_inputs, tmp_path, capsys, args, message):
    run = runs.find_run(figure_inputs["runs"], "tetrominoes", "nwm", readout="linear")
    with pytest.raises(SystemExit) as exit_info:
        animate.main([str(run), "--data-root", str(figure_inputs["data"]), "--out", str(tmp_path / "out"), *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize("source, args, message", [
    ("tetrominoes/nwm", ["--index", "8"], "--index 8: the tetrominoes test split holds 8 images"),  # resolved
    ("tetrominoes/cnn", [], "holds a cnn, which has no hidden state over time"),
    ("no/such/run", [], "is not a shipped model"),
])
def test_animate_takes_shipped_names_and_refuses_what_has_no_waves(figure_inputs, tmp_path, capsys, source, args,
                                                                    message):
    with pytest.raises(SystemExit) as exit_info:
        animate.main([source, "--data-root", str(figure_inputs["data"]), "--out", str(tmp_path / "out"), *args])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_score_strip_draws_trained_runs_only():
    """The background-only row of a scores table (no run) is a reference line in the tables, not a bar."""
    scores = pd.DataFrame([dict(dataset="d", model="background only", run=None, iou_foreground=0.0),
                           dict(dataset="d", model="cnn", run="d/cnn", depth=2, iou_foreground=0.5)])
    fig = plotting.score_strip(scores, "d")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["cnn\ndepth 2"]


def test_a_curve_is_set_against_the_spread_of_other_runs_per_epoch():
    spread = [("s1", pd.DataFrame({"epoch": [1, 2, 3], "val_loss": [1.0, 0.5, 0.4]})),
              ("s2", pd.DataFrame({"epoch": [1, 2], "val_loss": [2.0, 0.3]}))]  # stopped earlier
    curve = [("b", pd.DataFrame({"epoch": [1, 2], "val_loss": [1.5, 0.6]})),
             ("c", pd.DataFrame({"epoch": [1], "val_loss": [1.0]}))]
    table = curves.against_spread(curve, spread, "val_loss")
    assert list(table.index) == [1, 2]  # only the epochs every spread run has
    assert list(table["spread_min"]) == [1.0, 0.3] and list(table["spread_max"]) == [2.0, 0.5]
    assert list(table["b within"]) == [True, False]  # 0.6 lies above the band's 0.5
    assert list(table["c within"]) == [True, None]  # the band's edge is within; no epoch 2
    assert curves.labels(["a/x", "b/x", "b/y"]) == ["a/x", "b/x", "y"]


def test_a_curve_is_set_against_its_twin_at_its_seed_beside_the_seeds_range(tmp_path):
    for name, seed in (("f0", 0), ("f1", 1), ("b0", 0), ("b2", 2)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({"seed": seed}))
    dirs = [str(tmp_path / name) for name in ("b0", "b2")]
    assert curves.twins(dirs, [str(tmp_path / "f1"), str(tmp_path / "f0")]) == [1, None]
    spread = [("f0", pd.DataFrame({"epoch": [1, 2, 3], "val_loss": [1.0, 0.5, 0.4]})),
              ("f1", pd.DataFrame({"epoch": [1, 2, 3], "val_loss": [1.2, 0.4, 0.3]}))]
    curve = [("b0", pd.DataFrame({"epoch": [1, 2], "val_loss": [1.1, 0.45]})),
             ("b2", pd.DataFrame({"epoch": [1, 2], "val_loss": [9.0, 9.0]}))]
    table = curves.against_twin(curve, [0, None], spread, "val_loss")
    assert list(table.columns) == ["spread_range", "b0 - f0"] and list(table.index) == [1, 2]  # epochs all have
    assert table["spread_range"].tolist() == pytest.approx([0.2, 0.1])
    assert table["b0 - f0"].tolist() == pytest.approx([0.1, -0.05])


def test_curves_command_tells_apart_runs_of_one_name_in_other_folders(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # labels from the paths as given, relative here
    name = "tetrominoes/nwm-linear-T8-h2-seed0"
    for folder, seed, losses in (("runs", 0, [1.1, 0.45]), ("results/runs", 0, [1.0, 0.5]),
                                 ("results/runs", 1, [1.2, 0.4])):
        run_dir = tmp_path / folder / name.replace("seed0", f"seed{seed}")
        run_dir.mkdir(parents=True)
        (run_dir / "config.json").write_text(json.dumps({"seed": seed}))
        pd.DataFrame({"epoch": [1, 2], "val_loss": losses}).to_csv(run_dir / "metrics.csv", index=False)
    chosen, twin, other = f"runs/{name}", f"results/runs/{name}", f"results/runs/{name[:-1]}1"
    assert curves.labels([chosen, twin, other]) == [chosen, twin, "nwm-linear-T8-h2-seed1"]
    assert curves.labels(["x/a/r", "y/a/r", "b/r"]) == ["x/a/r", "y/a/r", "b/r"]  # as far back as they differ
    analysis_cli.main(["curves", chosen, "--spread", twin, other, "--metrics", "val_loss", "--figures", "figures"])
    out = capsys.readouterr().out
    assert f"{chosen} - {twin}" in out and "mean |value| over these epochs: spread_range 0.1500" in out
    with pytest.raises(SystemExit) as exit_info:  # one run twice, spelled two ways: no label can tell them apart
        analysis_cli.main(["curves", chosen, "--spread", f"./runs/../{twin}", twin, "--figures", "figures"])
    assert f"./runs/../{twin} and {twin} are the same run; name each run once" in str(exit_info.value.code)
    pd.DataFrame({"epoch": [1, 2, 2], "val_loss": [1.0, 0.5, 0.6]}).to_csv(f"{twin}/metrics.csv", index=False)
    with pytest.raises(SystemExit) as exit_info:  # its rows cannot be lined up with the others'
        analysis_cli.main(["curves", chosen, "--spread", twin, other, "--metrics", "val_loss", "--figures", "figures"])
    assert f"{twin}'s metrics.csv lists epoch 2 twice; keep one row per epoch" in str(exit_info.value.code)
    with pytest.raises(SystemExit) as exit_info:
        analysis_cli.main(["curves", chosen, "--metrics", "epoch", "--figures", "figures"])
    assert "nwm-linear-T8-h2-seed0's epoch is no metric to compare per epoch" in str(exit_info.value.code)


def test_curves_command_says_what_stops_setting_runs_against_each_other(tmp_path, monkeypatch, capsys):
    for name, seed in (("variant0", 0), ("base0", 0), ("base1", 1)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({"seed": seed}))
        pd.DataFrame({"epoch": [1, 2], "val_loss": [1.0, 0.5], "device_name": ["cpu"] * 2}).to_csv(
            tmp_path / name / "metrics.csv", index=False)
    command = ["curves", str(tmp_path / "variant0"), "--spread", str(tmp_path / "base0"), str(tmp_path / "base1"),
               "--figures", str(tmp_path / "figures")]
    with pytest.raises(SystemExit) as exit_info:  # a column of words: no difference from the twin
        analysis_cli.main([*command, "--metrics", "val_loss", "device_name"])
    said = str(exit_info.value.code)
    assert "variant0's device_name is no metric to compare per epoch; its metrics: val_loss" in said

    def cannot(*args):
        raise ValueError("cannot reindex on an axis with duplicate labels")
    monkeypatch.setattr(analysis_cli, "against_twin", cannot)
    with pytest.raises(SystemExit) as exit_info:  # whatever pandas says, as a message, and no table half printed
        analysis_cli.main([*command, "--metrics", "val_loss"])
    assert "cannot set the runs against each other per epoch (ValueError: cannot reindex" in str(exit_info.value.code)
    assert capsys.readouterr().out == "" and not (tmp_path / "figures").exists()


def test_curves_command_draws_runs_over_a_spread_and_names_missing_metrics(run_train, tmp_path, capsys):
    root = tmp_path / "runs"
    for seed in (0, 1, 2):
        run_train(root, "--epochs", "2", "--seed", str(seed), "--run-name", f"s{seed}")
    analysis_cli.main(["curves", str(root / "s0"), "--spread", str(root / "s1"), str(root / "s2"),
                       "--figures", str(tmp_path / "figures"), "--name", "ab"])
    out = capsys.readouterr().out
    assert "val_loss per epoch (spread: s1, s2)" in out and "s0 within" in out
    assert Image.open(tmp_path / "figures" / "ab.png").size[0] > 0
    with pytest.raises(SystemExit) as exit_info:
        analysis_cli.main(["curves", str(root / "s0"), "--metrics", "val_lss", "--figures", str(tmp_path)])
    assert "s0 has no column val_lss; its metrics: train_acc" in str(exit_info.value.code)
    with pytest.raises(SystemExit) as exit_info:
        analysis_cli.main(["curves", str(tmp_path / "figures"), "--figures", str(tmp_path)])
    assert "has no metrics.csv" in str(exit_info.value.code)


def test_per_class_iou_plot_tells_an_absent_class_from_a_missed_one():
    fig = plotting.per_class_iou_plot([float("nan"), 0.0, 0.5], ["background", "missed", "found"])
    ax = fig.axes[0]
    assert [p.get_height() for p in ax.patches] == [0.0, 0.0, 0.5]
    assert [(t.get_text(), t.get_position()[0]) for t in ax.texts] == [("absent", 0)]  # the NaN class only
    plotting.plt.close(fig)
