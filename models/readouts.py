"""Temporal readouts, shared by every model.

A recurrent model produces a hidden sequence y_1..y_T (B x T x C x H x W). A readout
turns each pixel's C time series into K features per channel and feeds the C*K
features to an MLP that is the same for every pixel (docs/methods.md, "Readouts"):

    linear     learned T -> K map over time (no bias), K = T // 2 + 1
    fft        |rfft| over time, K = T // 2 + 1 bins
    last       y_T
    mean_time  mean over time
    max_time   max over time

The features are accumulated frame by frame (`partial_features` + `combine`), so a model
can consume its sequence in segments without ever holding all T frames; feeding the
whole sequence at once is the same computation.
"""
import math

import torch
import torch.nn as nn

from . import head_cpu
from .common import full_precision

READOUTS = ("linear", "fft", "last", "mean_time", "max_time")


def num_temporal_features(readout, T):
    """Features per channel that `readout` extracts from a sequence of length T."""
    return T // 2 + 1 if readout in ("linear", "fft") else 1


class PixelMLP(nn.Module):
    """The same MLP at every pixel: in -> width (`depth` times, ReLU) -> num_classes.

    Takes channels-last features (B x H x W x F) so every layer is one matrix product
    over all pixels, and returns logits as a B x classes x H x W view.
    """

    def __init__(self, in_features, num_classes, width=256, depth=3):
        super().__init__()
        layers, d = [], in_features
        for _ in range(depth):
            # in-place ReLU: the head's activations are the largest tensors of a step
            layers += [nn.Linear(d, width), nn.ReLU(inplace=True)]
            d = width
        layers.append(nn.Linear(d, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, features):
        return self._layers(features, self.net)

    def from_first_product(self, product):
        """The same MLP given its first layer's product features @ W1^T (B x H x W x width,
        without the bias), as a readout folded into that layer computes it (which needs that layer
        to be linear: a change to the MLP keeps net[0] an nn.Linear and net[1] its activation)."""
        hidden = self.net[1](product + self.net[0].bias.to(product.dtype))
        return self._layers(hidden, self.net[2:])

    @staticmethod
    def _layers(x, layers):
        B, H, W, F = x.shape
        rows = x.reshape(B * H * W, F)
        # the same arithmetic in fewer passes over the activations where it can (models/head_cpu.py)
        logits = head_cpu.pixel_mlp(rows, layers[0::2]) if head_cpu.applies(rows) else layers(rows)
        return logits.view(B, H, W, -1).permute(0, 3, 1, 2)


def _time_basis(readout, T):
    """Fixed T x K' matrices that express a readout as a sum over time, or None. Kept in
    float64 (exact for float64 models) and cast to the frames' dtype where used."""
    t = torch.arange(T, dtype=torch.float64)
    if readout == "fft":
        k = torch.arange(T // 2 + 1, dtype=torch.float64)
        # angle = 2 pi (k t mod T) / T keeps the basis exact for large k * t
        angle = 2 * math.pi * torch.remainder(t[:, None] * k[None, :], T) / T
        real, imag = torch.cos(angle), -torch.sin(angle)
        imag[:, 0] = 0  # the DC bin (and Nyquist bin, below) is real: make it exactly so
        if T % 2 == 0:
            imag[:, -1] = 0
        return torch.cat([real, imag], dim=1)
    if readout == "last":
        basis = torch.zeros(T, 1, dtype=torch.float64)
        basis[-1] = 1.0
        return basis
    if readout == "mean_time":
        return torch.full((T, 1), 1.0 / T, dtype=torch.float64)
    return None


class TemporalReadout(nn.Module):
    """Per-pixel readout of a hidden sequence: temporal features, then a PixelMLP."""

    def __init__(self, readout, T, channels, num_classes, width=256, depth=3):
        super().__init__()
        if readout not in READOUTS:
            raise ValueError(f"unknown readout {readout!r}; valid readouts: {', '.join(READOUTS)}")
        self.readout, self.T, self.channels = readout, T, channels
        self.K = num_temporal_features(readout, T)
        if readout == "linear":
            # same initialisation as nn.Linear(T, K, bias=False), stored transposed (T x K)
            bound = 1.0 / math.sqrt(T)
            self.time_weight = nn.Parameter(torch.empty(T, self.K).uniform_(-bound, bound))
        basis = _time_basis(readout, T)
        if basis is not None:
            self.register_buffer("time_basis", basis, persistent=False)
        self.head = PixelMLP(channels * self.K, num_classes, width, depth)

    def projection(self):
        """The T x K' matrix the readout sums the frames with (None for max_time)."""
        if self.readout == "max_time":
            return None
        return self.time_weight if self.readout == "linear" else self.time_basis

    def folds_into_head(self):
        """Whether the linear readout's time map L (T x K) is better folded into the head's first
        layer W1 (width x C*K): projecting each channel's T frames on its K features and the C*K
        features on W1 costs C*T*K + C*K*width multiply-adds a pixel, on L W1 directly C*T*width (51,200
        instead of 107,712 for 16 channels, T = 100 and a 32-wide head; not for 2 channels and a
        256-wide one), and the C*K features are never stored."""
        if self.readout != "linear" or len(self.head.net) < 3:
            return False
        T, C, K, width = self.T, self.channels, self.K, self.head.net[0].out_features
        return C * T * width < C * T * K + C * K * width

    def folded_basis(self):
        """T x C x width: basis[t, c] = sum_k L[t, k] W1[:, c*K + k] (finish() orders the features
        channel-major), so that sum_{t,c} y_t[c] basis[t, c] is the head's first product."""
        first = self.head.net[0].weight.view(-1, self.channels, self.K)
        return torch.einsum("tk,ock->tco", self.time_weight, first)

    def partial_features(self, frames, t0):
        """Contribution of frames y_{t0+1}..y_{t0+n} (a list of B x C x H x W tensors).

        Returns B x C x H x W x K' (K' = 2K for fft: real and imaginary parts): time is
        the last axis of the stacked frames, so the projection is one matrix product.
        """
        stacked = torch.stack(frames, dim=-1)  # B x C x H x W x n
        if self.readout == "max_time":
            return stacked.amax(dim=-1, keepdim=True)
        return stacked @ self.projection()[t0:t0 + len(frames)].to(stacked.dtype)

    def combine(self, accumulated, partial):
        if accumulated is None:
            return partial
        if self.readout == "max_time":
            return torch.maximum(accumulated, partial)
        return accumulated + partial

    def finish(self, accumulated):
        """Accumulated partial features -> B x H x W x (C * K) input of the MLP."""
        if self.readout == "fft":
            real, imag = full_precision(accumulated).chunk(2, dim=-1)  # (complex numbers need float32)
            # |complex| has a zero (not NaN) gradient at 0, unlike sqrt(re^2 + im^2)
            accumulated = torch.complex(real, imag).abs()
        B, C, H, W, K = accumulated.shape
        return accumulated.permute(0, 2, 3, 1, 4).reshape(B, H, W, C * K)

    def features(self, sequence):
        """B x T x C x H x W sequence -> B x H x W x (C * K) features, in one go."""
        return self.finish(self.partial_features(list(sequence.unbind(1)), 0))

    def forward(self, sequence):
        return self.head(self.features(sequence))
