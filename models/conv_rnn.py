"""Convolutional recurrent baselines: ConvLSTM, ConvGRU and ConvRNN (docs/methods.md, "Models").

The image is encoded once into the first input map u_0 (and the initial hidden state h_0,
and for the LSTM the cell state c_0). Each step feeds u and h to a convolutional cell
(3x3 kernels, circular padding), and the next input is a per-pixel MLP of the new
hidden state:  h_t = cell(u_{t-1}, h_{t-1});  u_t = MLP(h_t).
The readout sees u_1..u_T. The paper's LSTM runs use T = 20. On the CPU the ConvLSTM's
steps and their projection on the readout's time basis run in a compiled kernel where one
can be built (models/convlstm_fused.py); the eager steps are its fallback.
"""
import torch
import torch.nn as nn

from . import convlstm_fused
from .common import bf16_projection, conv_stack, full_precision, unroll
from .readouts import TemporalReadout

CELLS = ("lstm", "gru", "rnn")


def circular_conv(c_in, c_out, bias=True):
    return nn.Conv2d(c_in, c_out, 3, padding=1, padding_mode="circular", bias=bias)


def pointwise(conv, x):
    """A 1x1 convolution as one contraction over channels: the same sums, but with these few
    channels several times faster than a convolution call, forward and backward, on the CPU.
    Contiguous: the contraction returns a permuted layout, and a step whose inputs change layout
    after the first step is compiled twice by torch.compile."""
    weight = conv.weight.view(conv.weight.shape[0], -1)
    return (torch.einsum("oc,bchw->bohw", weight, x) + conv.bias[:, None, None]).contiguous()


class ConvLSTMCell(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.gates = circular_conv(2 * c, 4 * c)  # input, forget, output, candidate

    def forward(self, u, h, cell):
        i, f, o, g = self.gates(torch.cat([u, h], dim=1)).chunk(4, dim=1)
        cell = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(cell), cell


class ConvGRUCell(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.gates = circular_conv(2 * c, 2 * c)  # update, reset
        self.candidate = circular_conv(2 * c, c)

    def forward(self, u, h, cell=None):
        update, reset = torch.sigmoid(self.gates(torch.cat([u, h], dim=1))).chunk(2, dim=1)
        candidate = torch.tanh(self.candidate(torch.cat([u, reset * h], dim=1)))
        return (1 - update) * h + update * candidate, None


class ConvRNNCell(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.input_conv = circular_conv(c, c)
        self.hidden_conv = circular_conv(c, c)

    def forward(self, u, h, cell=None):
        return torch.relu(self.input_conv(u) + self.hidden_conv(h)), None


class ConvRNN(nn.Module):
    recurrent = True

    def __init__(self, cell="lstm", in_channels=3, num_classes=6, c_mid=16, hidden_channels=2,
                 T=20, readout="linear", readout_width=256, readout_depth=3, bptt_segment=0):
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"unknown cell {cell!r}; valid cells: {', '.join(CELLS)}")
        self.cell_type, self.T, self.bptt_segment = cell, T, bptt_segment
        c = hidden_channels
        self.input_encoder = conv_stack(in_channels, c_mid, c, 4, nn.Tanh())
        self.hidden_encoder = conv_stack(in_channels, c_mid, c, 3)
        if cell == "lstm":
            self.cell_encoder = conv_stack(in_channels, c_mid, c, 3)
        self.cell = {"lstm": ConvLSTMCell, "gru": ConvGRUCell, "rnn": ConvRNNCell}[cell](c)
        self.next_input = nn.Sequential(nn.Conv2d(c, 2 * c, 1), nn.ReLU(), nn.Conv2d(2 * c, c, 1))
        self.readout = TemporalReadout(readout, T, c, num_classes, readout_width, readout_depth)

    def step(self, state):
        u, h, cell = state
        h, cell = self.cell(u, h, cell)
        first, relu, second = self.next_input
        u = pointwise(second, relu(pointwise(first, h)))
        return (u, h, cell), u

    def initial_state(self, x):
        u = self.input_encoder(x)
        h = self.hidden_encoder(x)
        # GRU and RNN have no cell state; a placeholder keeps the state tuple uniform
        cell = self.cell_encoder(x) if self.cell_type == "lstm" else torch.zeros_like(h)
        return u, h, cell

    def forward(self, x, return_sequence=False):
        """x: B x in_channels x H x W -> logits B x classes x H x W (and u_1..u_T if asked)."""
        state = self.initial_state(x)
        projection = self.readout.projection()
        if self.cell_type == "lstm" and projection is not None and not return_sequence:
            u, h, cell = (full_precision(s) for s in state)
            lib = convlstm_fused.kernel(u)
            if lib is not None:
                # same numbers, the steps in a compiled CPU kernel, hand-written backward (models/convlstm_fused.py)
                half = bf16_projection(x.device)
                with torch.autocast(x.device.type, enabled=False):
                    projected = convlstm_fused.convlstm_projection(lib, u, h, cell, self.cell.gates, self.next_input,
                                                                   projection.to(u.dtype), half)
                return self.readout.head(self.readout.finish(projected))
        features, sequence = unroll(self.step, state, self.T, self.readout, self.bptt_segment, return_sequence)
        logits = self.readout.head(features)
        return (logits, sequence) if return_sequence else logits
