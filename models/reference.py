"""The models in the paper's literal equations: the ground truth the fast paths are checked against.

Each reference model computes what its counterpart in models/ computes, written the
straightforward way: a Python loop over the T steps with each equation as printed in
docs/methods.md, the whole hidden sequence stacked, the readout applied to it, plain
autograd. tests/test_models.py checks outputs and gradients of every model and readout
against these (in float64), and bench.py times them as the baseline of its speed-ups.

    build_reference(name, **config)   same keywords as models.build_model
    copy_weights(model, reference)    load a project model's parameters into its reference
"""
import torch
import torch.nn as nn

from . import model_config_keys
from .readouts import READOUTS
from .unet import UNet


def convs(c_in, c_mid, c_out, n, last):
    """n 3x3 convs c_in -> c_mid ... -> c_out, ReLU between, `last` (a module or None) at the end."""
    layers, c = [], c_in
    for i in range(n):
        layers += [nn.Conv2d(c, c_out if i == n - 1 else c_mid, 3, padding=1)]
        layers += [nn.ReLU()] if i < n - 1 else ([last] if last else [])
        c = c_mid
    return nn.Sequential(*layers)


def head(d, classes, width, depth):
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(d, width), nn.ReLU()]
        d = width
    return nn.Sequential(*layers, nn.Linear(d, classes))


class Readout(nn.Module):
    """The temporal readouts on a stacked sequence B x T x C x H x W, then the per-pixel MLP."""

    def __init__(self, readout, T, channels, num_classes, width, depth):
        super().__init__()
        if readout not in READOUTS:
            raise ValueError(f"unknown readout {readout!r}")
        self.readout = readout
        K = T // 2 + 1 if readout in ("linear", "fft") else 1
        if readout == "linear":
            self.time = nn.Linear(T, K, bias=False)
        self.head = head(channels * K, num_classes, width, depth)

    def forward(self, sequence):
        series = sequence.permute(0, 3, 4, 2, 1)  # B H W C T: each pixel's and channel's time series
        features = {"linear": lambda s: self.time(s),
                    "fft": lambda s: torch.fft.rfft(s, dim=-1).abs(),
                    "last": lambda s: s[..., -1:],
                    "mean_time": lambda s: s.mean(-1, keepdim=True),
                    "max_time": lambda s: s.amax(-1, keepdim=True)}[self.readout](series)
        return self.head(features.flatten(3)).permute(0, 3, 1, 2)  # B H W (C K) -> B classes H W


class RefNWM(nn.Module):
    def __init__(self, in_channels=3, num_classes=6, c_mid=16, hidden_channels=2, T=100, dt=0.1,
                 readout="linear", readout_width=256, readout_depth=3):
        super().__init__()
        c, self.T, self.dt = hidden_channels, T, dt
        self.omega = convs(in_channels, c_mid, c, 3, nn.ReLU())
        self.alpha = convs(in_channels, c_mid, c, 3, nn.ReLU())
        self.position = convs(in_channels, c_mid, c, 4, nn.Tanh())
        self.W = nn.Conv2d(c, c, 3, padding=1, padding_mode="circular", bias=False)
        self.readout = Readout(readout, T, c, num_classes, readout_width, readout_depth)

    def forward(self, x):
        omega, alpha, y = self.omega(x), self.alpha(x), self.position(x)
        z, ys = torch.zeros_like(y), []
        for _ in range(self.T):
            z = z + self.dt * (torch.tanh(self.W(y)) - omega * y - alpha * z)
            y = y + self.dt * z
            ys.append(y)
        return self.readout(torch.stack(ys, dim=1))


class RefConvRNN(nn.Module):
    def __init__(self, cell="lstm", in_channels=3, num_classes=6, c_mid=16, hidden_channels=2, T=20,
                 readout="linear", readout_width=256, readout_depth=3):
        super().__init__()
        c, self.T, self.cell = hidden_channels, T, cell
        self.u0 = convs(in_channels, c_mid, c, 4, nn.Tanh())
        self.h0 = convs(in_channels, c_mid, c, 3, None)
        if cell == "lstm":
            self.c0 = convs(in_channels, c_mid, c, 3, None)
            self.gates = nn.Conv2d(2 * c, 4 * c, 3, padding=1, padding_mode="circular")
        elif cell == "gru":
            self.gates = nn.Conv2d(2 * c, 2 * c, 3, padding=1, padding_mode="circular")
            self.candidate = nn.Conv2d(2 * c, c, 3, padding=1, padding_mode="circular")
        else:
            self.input_conv = nn.Conv2d(c, c, 3, padding=1, padding_mode="circular")
            self.hidden_conv = nn.Conv2d(c, c, 3, padding=1, padding_mode="circular")
        self.mlp = nn.Sequential(nn.Conv2d(c, 2 * c, 1), nn.ReLU(), nn.Conv2d(2 * c, c, 1))
        self.readout = Readout(readout, T, c, num_classes, readout_width, readout_depth)

    def forward(self, x):
        u, h, us = self.u0(x), self.h0(x), []
        cell = self.c0(x) if self.cell == "lstm" else None
        for _ in range(self.T):
            if self.cell == "lstm":
                i, f, o, g = self.gates(torch.cat([u, h], 1)).chunk(4, 1)
                cell = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(cell)
            elif self.cell == "gru":
                update, reset = torch.sigmoid(self.gates(torch.cat([u, h], 1))).chunk(2, 1)
                h = (1 - update) * h + update * torch.tanh(self.candidate(torch.cat([u, reset * h], 1)))
            else:
                h = torch.relu(self.input_conv(u) + self.hidden_conv(h))
            u = self.mlp(h)
            us.append(u)
        return self.readout(torch.stack(us, dim=1))


class RefCNN(nn.Module):
    def __init__(self, in_channels=3, num_classes=6, c_mid=16, hidden_channels=2, depth=8, T=100,
                 readout_width=256, readout_depth=3):
        super().__init__()
        self.trunk = convs(in_channels, c_mid, hidden_channels, depth, nn.ReLU())
        self.expand = nn.Conv2d(hidden_channels, (T // 2 - 1) * hidden_channels, 1)
        self.head = head((T // 2 - 1) * hidden_channels, num_classes, readout_width, readout_depth)

    def forward(self, x):
        return self.head(self.expand(self.trunk(x)).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


_REFERENCES = {"nwm": (RefNWM, {}), "lstm": (RefConvRNN, {"cell": "lstm"}), "gru": (RefConvRNN, {"cell": "gru"}),
               "rnn": (RefConvRNN, {"cell": "rnn"}), "cnn": (RefCNN, {}),
               "unet": (UNet, {})}  # nothing to fuse or reorder: the standard U-Net is its own reference


def build_reference(name, **config):
    """The reference of models.build_model(name, **config); keywords it does not use are ignored."""
    keys = set(model_config_keys(name)) - {"bptt_segment", "fused"}  # speed settings: no meaning here
    cls, fixed = _REFERENCES[name]
    return cls(**fixed, **{k: v for k, v in config.items() if k in keys and v is not None})


def copy_weights(model, reference):
    """Loads `model`'s parameters into its reference: both register the same parameters in
    the same order (the reference's nn.Linear over time holds the project's T x K readout
    matrix transposed)."""
    source, target = list(model.parameters()), list(reference.parameters())
    if len(source) != len(target):
        raise ValueError(f"{len(source)} parameters in the model, {len(target)} in the reference")
    with torch.no_grad():
        for s, t in zip(source, target):
            t.copy_(s if s.shape == t.shape else s.t())
