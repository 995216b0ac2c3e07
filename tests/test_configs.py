"""configs.py: the paper's settings, and train.py's help, which states them from the same table."""
import train
from configs import default_help, paper_settings


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
