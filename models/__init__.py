"""Model registry: `build_model(name, **config)` builds any model of the paper by name.

    nwm            Neural Wave Machine (coupled oscillators), models/nwm.py
    lstm/gru/rnn   convolutional recurrent baselines, models/conv_rnn.py
    cnn            feed-forward CNN of configurable depth, models/cnn.py
    unet           U-Net of configurable base width, models/unet.py

Every model maps B x in_channels x H x W images to B x num_classes x H x W logits, for
any image size.
"""
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


def build_model(name, **config):
    """Build model `name` from keyword arguments (see CONFIG_KEYS).

    Keywords a model does not use are ignored, so one config can describe any model;
    the exception is a temporal readout other than `linear` for the feed-forward models,
    which would silently train something else than asked.
    """
    keys = model_config_keys(name)
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    if unknown:
        raise TypeError(f"unknown model keyword(s) {', '.join(unknown)}; "
                        f"valid keywords: {', '.join(CONFIG_KEYS)}")
    readout = config.get("readout")
    if readout is not None and readout not in READOUTS:
        raise ValueError(f"unknown readout {readout!r}; valid readouts: {', '.join(READOUTS)}")
    if not is_recurrent(name) and readout not in (None, "linear"):
        raise ValueError(f"model {name!r} has no temporal readout (got readout={readout!r}); "
                         f"readouts apply to the recurrent models: "
                         f"{', '.join(n for n in MODEL_NAMES if is_recurrent(n))}")
    cls, _, fixed = _REGISTRY[name]
    return cls(**fixed, **{k: v for k, v in config.items() if k in keys and v is not None})


def count_parameters(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
