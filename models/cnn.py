"""Feed-forward CNN baseline of configurable depth (docs/methods.md, "Models").

L 3x3 convs with ReLU (c_in -> c_mid -> ... -> c_out), then a 1x1 conv to K' * c_out
features with K' = T/2 - 1, then the same per-pixel MLP as the recurrent models' linear
readout. Each output pixel sees only a (2L+1) x (2L+1) window of the input: the local
model the waves are compared against.
"""
import torch.nn as nn

from .common import conv_stack
from .readouts import PixelMLP


def features_per_channel(T):
    """K' = T/2 - 1, the features per hidden channel of a CNN built with keyword T (49 for the paper's T = 100;
    the flag and config.json keep the name T)."""
    return T // 2 - 1


class CNN(nn.Module):
    recurrent = False

    def __init__(self, in_channels=3, num_classes=6, c_mid=16, hidden_channels=2, depth=8,
                 T=100, readout_width=256, readout_depth=3):
        super().__init__()
        if depth < 1:
            raise ValueError(f"CNN depth must be at least 1, got {depth}")
        if features_per_channel(T) < 1:
            raise ValueError(f"CNN needs T >= 4 (it makes T/2 - 1 features per channel), got T={T}")
        self.trunk = conv_stack(in_channels, c_mid, hidden_channels, depth, nn.ReLU())
        features = features_per_channel(T) * hidden_channels
        self.expand = nn.Conv2d(hidden_channels, features, 1)
        self.head = PixelMLP(features, num_classes, readout_width, readout_depth)

    def forward(self, x):
        features = self.expand(self.trunk(x))
        return self.head(features.permute(0, 2, 3, 1))
