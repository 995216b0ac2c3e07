"""The paper's experiments in one table: each dataset x model's settings, the grid of runs,
and the results the paper reports (docs/methods.md, "Experiments" and "Results").

train.py fills every model setting left unset from `paper_settings`; bench.py times the
configurations of BENCH_CONFIGS; the analyses and the tests read the same table, and the
shell scripts in scripts/ run GRID (tests/test_scripts.py checks that they do).
"""
from dataset_config import get_info
from models import READOUTS, is_recurrent, model_config_keys

# The settings shared by every experiment (the paper's values), and where they differ
DEFAULTS = dict(c_mid=16, dt=0.1, T=100, hidden_channels=2, readout="linear", readout_width=256, readout_depth=3,
                depth=8, width=4)
CONV_RNNS = ("lstm", "gru", "rnn")
CONV_RNN = dict(T=20)  # the conv recurrent baselines run fewer steps
WIDE_DATASETS = ("multi_mnist", "polygons")
WIDE = dict(hidden_channels=16)  # more wave channels on the wide datasets
WIDE_NWM = dict(readout_width=32, readout_depth=5)  # and there the NWM has a small head


def paper_settings(dataset, model):
    """Every model setting of `model` on `dataset` as the paper trained it."""
    settings = dict(DEFAULTS)
    if model in CONV_RNNS:
        settings.update(CONV_RNN)
    if dataset in WIDE_DATASETS:
        settings.update(WIDE)
        if model == "nwm":
            settings.update(WIDE_NWM)
    if not is_recurrent(model):
        settings["readout"] = None  # feed-forward models have no temporal readout
    return settings


def default_help(key):
    """The paper's value of model setting `key` in words, for train.py --help, e.g.
    "(default: 20 for lstm/gru/rnn, else 100)", with the range GRID varies it over."""
    wide = " and ".join(WIDE_DATASETS)
    rules = [f"{CONV_RNN[key]} for {'/'.join(CONV_RNNS)}"] if key in CONV_RNN else []
    rules += [f"{WIDE[key]} on {wide}"] if key in WIDE else []
    rules += [f"{WIDE_NWM[key]} for the NWM on {wide}"] if key in WIDE_NWM else []
    text = ", ".join(rules + [f"else {DEFAULTS[key]}"]) if rules else str(DEFAULTS[key])
    varied = [value for setting, values, _ in GRID.values() if setting == key for value in values]
    if varied:
        text += f"; paper: {min(varied)}-{max(varied)}"
    return f"(default: {text})"


def model_config(dataset, model, data_root=None, **overrides):
    """build_model keywords for `model` on `dataset` (built in, or imported under `data_root`): the
    dataset's channels and classes, the paper's settings, then `overrides`."""
    info = get_info(dataset, data_root)
    config = dict(in_channels=info.channels, num_classes=info.num_classes)
    config.update({k: v for k, v in paper_settings(dataset, model).items() if k in model_config_keys(model)})
    config.update(overrides)
    return config


# The paper's grid: (dataset, model) -> (the setting its runs vary, the values, seeds per value)
GRID = {
    ("tetrominoes", "nwm"): ("readout", READOUTS, 10),
    ("tetrominoes", "lstm"): ("readout", ("linear", "fft"), 10),
    ("tetrominoes", "cnn"): ("depth", (2, 4, 8, 16, 32), 10),
    ("mnist", "nwm"): ("readout", READOUTS, 10),
    ("mnist", "lstm"): ("readout", ("linear", "fft"), 10),
    ("mnist", "cnn"): ("depth", (2, 4, 8, 16, 32), 10),
    ("multi_mnist", "nwm"): ("readout", ("linear",), 12),
    ("multi_mnist", "unet"): ("width", (2, 3, 4, 5), 12),
    ("polygons", "nwm"): ("readout", ("linear",), 10),
}

# bench.py's configurations: name -> (dataset, model, settings other than the paper's defaults)
BENCH_CONFIGS = {
    "tetrominoes_nwm": ("tetrominoes", "nwm", {}),
    "tetrominoes_lstm": ("tetrominoes", "lstm", {}),
    "tetrominoes_cnn8": ("tetrominoes", "cnn", {"depth": 8}),
    "multi_mnist_nwm": ("multi_mnist", "nwm", {}),
    "multi_mnist_unet4": ("multi_mnist", "unet", {"width": 4}),
}

# The paper's test results: (dataset, model, variant) -> (fg IoU mean, std, fg acc mean, std);
# std None where the paper gives the mean only. Variants are named as runs.variant names them.
PAPER_RESULTS = {
    ("tetrominoes", "nwm", "linear"): (0.98, 0.01, 0.99, 0.00),
    ("tetrominoes", "nwm", "fft"): (0.97, 0.01, 0.98, 0.01),
    ("tetrominoes", "nwm", "last"): (0.90, None, 0.94, None),
    ("tetrominoes", "nwm", "mean_time"): (0.87, None, 0.92, None),
    ("tetrominoes", "nwm", "max_time"): (0.81, None, 0.88, None),
    ("tetrominoes", "lstm", "linear"): (0.94, 0.03, 0.97, 0.02),
    ("tetrominoes", "lstm", "fft"): (0.91, 0.07, 0.95, 0.04),
    ("tetrominoes", "cnn", "depth 2"): (0.14, None, 0.24, None),
    ("tetrominoes", "cnn", "depth 4"): (0.20, None, 0.31, None),
    ("tetrominoes", "cnn", "depth 8"): (0.64, None, 0.74, None),
    ("tetrominoes", "cnn", "depth 16"): (0.40, None, 0.40, None),
    ("tetrominoes", "cnn", "depth 32"): (0.32, None, 0.33, None),
    ("mnist", "nwm", "linear"): (0.85, 0.04, 0.90, 0.02),
    ("mnist", "nwm", "fft"): (0.65, 0.07, 0.76, 0.05),
    ("mnist", "lstm", "linear"): (0.73, 0.26, 0.79, 0.28),
    ("mnist", "cnn", "depth 2"): (0.10, None, 0.14, None),
    ("mnist", "cnn", "depth 4"): (0.13, None, 0.19, None),
    ("mnist", "cnn", "depth 8"): (0.30, None, 0.42, None),
    ("mnist", "cnn", "depth 16"): (0.50, None, 0.57, None),
    ("mnist", "cnn", "depth 32"): (0.25, None, 0.27, None),
    ("multi_mnist", "nwm", "linear"): (0.93, 0.01, 0.96, 0.01),
    ("multi_mnist", "unet", "width 2"): (0.60, None, 0.66, None),
    ("multi_mnist", "unet", "width 3"): (0.87, None, 0.90, None),
    ("multi_mnist", "unet", "width 4"): (0.96, None, 0.97, None),
    ("multi_mnist", "unet", "width 5"): (0.97, None, 0.98, None),
}
