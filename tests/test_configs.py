"""configs.py: the paper's settings and grid, and train.py's help, which states them from the same table."""
import re
from pathlib import Path

import train
from configs import GRID, default_help, paper_settings

METHODS = Path(__file__).resolve().parents[1] / "docs" / "methods.md"


def test_help_states_the_papers_values_from_the_table():
    assert default_help("T") == "(default: 20 for lstm/gru/rnn, else 100)"
    assert paper_settings("tetrominoes", "lstm")["T"] == 20 and paper_settings("tetrominoes", "nwm")["T"] == 100
    assert default_help("readout_width") == "(default: 32 for the NWM on multi_mnist and polygons, else 256)"
    assert paper_settings("polygons", "nwm")["readout_width"] == 32
    assert paper_settings("polygons", "lstm")["readout_width"] == 256
    assert default_help("depth") == "(default: 8; paper: 2-32)" and default_help("width") == "(default: 4; paper: 2-5)"
    assert default_help("dt") == "(default: 0.1)"
    flat = " ".join(train.build_parser().format_help().split())
    assert "hidden (wave) channels (default: 16 on multi_mnist and polygons, else 2)" in flat


def methods_grid():
    """docs/methods.md's table of the grid as {(dataset, model): (setting, values, seeds)}."""
    names = {"Tetrominoes": "tetrominoes", "MNIST": "mnist", "Multi-MNIST": "multi_mnist", "Polygons": "polygons",
             "NWM": "nwm", "ConvLSTM": "lstm", "CNN": "cnn", "U-Net": "unet"}
    text = METHODS.read_text().split("The grid (`configs.GRID`")[1]
    grid = {}
    for dataset, models, varied, seeds in re.findall(r"^\| (\S+) \| ([^|]+) \| ([^|]+) \| (\d+) \|$", text, re.M):
        for model in re.split(r", (?![^(]*\))", models):  # not the commas inside "(16 channels, 32-wide head)"
            key = names[dataset], names[model.split(" (")[0]]
            if varied.startswith("as for "):
                grid[key] = grid[names[varied.split()[-1]], key[1]][:2] + (int(seeds),)
            elif ": " in varied:
                setting, values = varied.split(": ")
                grid[key] = setting, tuple(int(v) if v.isdigit() else v for v in values.split(", ")), int(seeds)
            else:  # "linear readout"
                grid[key] = varied.split()[1], (varied.split()[0],), int(seeds)
    return grid


def test_the_grid_is_the_papers_table_in_methods_md():
    assert methods_grid() == {key: (setting, tuple(values), seeds) for key, (setting, values, seeds) in GRID.items()}
