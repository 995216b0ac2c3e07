"""Model registry: `build_model(name, **config)` builds any model of the paper by name.

    nwm            Neural Wave Machine (coupled oscillators), models/nwm.py
    lstm/gru/rnn   convolutional recurrent baselines, models/conv_rnn.py
    cnn            feed-forward CNN of configurable depth, models/cnn.py
    unet           U-Net of configurable base width, models/unet.py

Every model maps B x in_channels x H x W images to B x num_classes x H x W logits, for
any image size (the U-Net's at least 16 x 16: it pools four times).
"""
import math
import numbers

from .cnn import CNN
from .conv_rnn import ConvRNN
from .nwm import NWM
from .readouts import READOUTS
from .unet import UNet

# Every keyword build_model understands, with what it sets.
CONFIG_KEYS = {
    "in_channels": "input image channels",
    "num_classes": "output classes (background included)",
    "c_mid": "encoder width",
    "hidden_channels": "hidden (wave) channels",
    "T": "recurrent steps; the CNN makes T/2-1 features per channel",
    "dt": "NWM step size",
    "readout": f"temporal readout, one of {', '.join(READOUTS)}",
    "readout_width": "units per hidden layer of the per-pixel MLP head",
    "readout_depth": "hidden layers of the per-pixel MLP head",
    "depth": "CNN depth: number of 3x3 convs",
    "width": "U-Net base width",
    "bptt_segment": "steps per recomputed segment in backpropagation through time (0: store all)",
    "fused": "NWM: hand-written recurrence and backward pass (models/nwm_fused.py) instead of autograd",
}
# The least value of each whole-number keyword: build_model refuses less, and train.py's flags take these ranges.
# dt is a positive finite number, fused True or False, readout one of READOUTS.
AT_LEAST = dict(in_channels=1, num_classes=1, c_mid=1, hidden_channels=1, T=1, readout_width=1, readout_depth=0,
                depth=1, width=1, bptt_segment=0)

# name -> (class, the keywords it uses, fixed keywords)
_RECURRENT = ("in_channels", "num_classes", "c_mid", "hidden_channels", "T", "readout",
              "readout_width", "readout_depth", "bptt_segment")
_REGISTRY = {
    "nwm": (NWM, _RECURRENT + ("dt", "fused"), {}),
    "lstm": (ConvRNN, _RECURRENT, {"cell": "lstm"}),
    "gru": (ConvRNN, _RECURRENT, {"cell": "gru"}),
    "rnn": (ConvRNN, _RECURRENT, {"cell": "rnn"}),
    "cnn": (CNN, ("in_channels", "num_classes", "c_mid", "hidden_channels", "depth", "T",
                  "readout_width", "readout_depth"), {}),
    "unet": (UNet, ("in_channels", "num_classes", "width"), {}),
}
MODEL_NAMES = tuple(_REGISTRY)


def model_config_keys(name):
    """The build_model keywords that matter for model `name` (the others are ignored)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(MODEL_NAMES)}")
    return _REGISTRY[name][1]


def is_recurrent(name):
    """Whether model `name` runs a recurrence (and so has a temporal readout and a hidden sequence)."""
    model_config_keys(name)  # validates the name
    return _REGISTRY[name][0].recurrent


def check_config(config):
    """ValueError naming the keyword and its allowed values, for a value (not None) no model can be built with."""
    for key, value in config.items():
        if value is None:
            continue
        if key in AT_LEAST and (isinstance(value, bool) or not isinstance(value, numbers.Integral)
                                or value < AT_LEAST[key]):
            raise ValueError(f"{key} must be a whole number >= {AT_LEAST[key]}, got {value!r}")
        if key == "dt" and (isinstance(value, bool) or not isinstance(value, numbers.Real)
                            or not math.isfinite(value) or value <= 0):
            raise ValueError(f"dt must be a positive finite number, got {value!r}")
        if key == "fused" and not isinstance(value, bool):
            raise ValueError(f"fused must be True or False, got {value!r}")
        if key == "readout" and value not in READOUTS:
            raise ValueError(f"unknown readout {value!r}; valid readouts: {', '.join(READOUTS)}")


def build_model(name, **config):
    """Build model `name` from keyword arguments (see CONFIG_KEYS, and AT_LEAST for their ranges).

    Keywords a model does not use are ignored, so one config can describe any model;
    the exception is a temporal readout other than `linear` for the feed-forward models,
    which would silently train something else than asked.
    """
    keys = model_config_keys(name)
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    if unknown:
        raise TypeError(f"unknown model keyword(s) {', '.join(unknown)}; "
                        f"valid keywords: {', '.join(CONFIG_KEYS)}")
    check_config(config)
    readout = config.get("readout")
    if not is_recurrent(name) and readout not in (None, "linear"):
        raise ValueError(f"model {name!r} has no temporal readout (got readout={readout!r}); "
                         f"readouts apply to the recurrent models: "
                         f"{', '.join(n for n in MODEL_NAMES if is_recurrent(n))}")
    cls, _, fixed = _REGISTRY[name]
    return cls(**fixed, **{k: v for k, v in config.items() if k in keys and v is not None})


def count_parameters(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
