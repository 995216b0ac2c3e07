"""Neural Wave Machine: a damped, locally coupled oscillator RNN (docs/methods.md, "Models").

Three 3x3 convolutional encoders read the image once and set, per pixel and channel,
the natural frequency omega >= 0, the damping alpha >= 0 and the initial position y.
The velocity z starts at 0. Each of the T steps is

    z <- z + dt * ( tanh(W * y) - omega * y - alpha * z )
    y <- y + dt * z                                   (with the new z)

where W is a 3x3 convolution with circular padding, initialised to the discrete
Laplacian on each channel: a wave equation whose waves carry information across the
image, far beyond the 3x3 neighbourhood of one step. The readout sees y_1..y_T.

The step below is that update folded into fewer operations, and the default forward pass
runs it through a hand-written recurrence with its adjoint (nwm_fused.py);
models/reference.py holds the equations exactly as written, which the tests check both
against.
"""
import torch
import torch.nn as nn

from .common import bf16_projection, conv_stack, full_precision, unroll
from .nwm_fused import wave_recurrence_projection
from .readouts import TemporalReadout

LAPLACIAN = ((0.0, 1.0, 0.0), (1.0, -4.0, 1.0), (0.0, 1.0, 0.0))


def laplacian_coupling(channels):
    """3x3 circular conv that applies the discrete Laplacian to each channel alone."""
    conv = nn.Conv2d(channels, channels, 3, padding=1, padding_mode="circular", bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        for c in range(channels):
            conv.weight[c, c] = torch.tensor(LAPLACIAN)
    return conv


def oscillator_step(y, z, coupling, dt_omega, damping, dt):
    """One step of the NWM: (y, z) -> (y, z), with `coupling` the conv W.

    z + dt (tanh(W*y) - omega y - alpha z) is computed as
    damping z - dt_omega y + dt tanh(W*y), with damping = 1 - dt alpha and
    dt_omega = dt omega fixed over the steps: the same update in fewer operations.
    """
    z = torch.addcmul(damping * z, dt_omega, y, value=-1).add_(torch.tanh(coupling(y)), alpha=dt)
    return torch.add(y, z, alpha=dt), z


class NWM(nn.Module):
    recurrent = True

    def __init__(self, in_channels=3, num_classes=6, c_mid=16, hidden_channels=2, T=100,
                 dt=0.1, readout="linear", readout_width=256, readout_depth=3, bptt_segment=0,
                 fused=True):
        super().__init__()
        self.T, self.dt, self.bptt_segment, self.fused = T, dt, bptt_segment, fused
        c = hidden_channels
        self.omega_encoder = conv_stack(in_channels, c_mid, c, 3, nn.ReLU())
        self.alpha_encoder = conv_stack(in_channels, c_mid, c, 3, nn.ReLU())
        self.position_encoder = conv_stack(in_channels, c_mid, c, 4, nn.Tanh())
        self.coupling = laplacian_coupling(c)
        self.readout = TemporalReadout(readout, T, c, num_classes, readout_width, readout_depth)

    def step(self, state, dt_omega, damping):
        """One oscillator step (oscillator_step): (y, z) -> (y, z), and y is the frame the readout sees."""
        y, z = oscillator_step(*state, self.coupling, dt_omega, damping, self.dt)
        return (y, z), y

    def initial_state(self, x):
        """(omega, alpha, y_0, z_0) from the image; float32 also under autocast."""
        omega = full_precision(self.omega_encoder(x))
        alpha = full_precision(self.alpha_encoder(x))
        y = full_precision(self.position_encoder(x))
        return omega, alpha, y, torch.zeros_like(y)

    def forward(self, x, return_sequence=False):
        """x: B x in_channels x H x W -> logits B x classes x H x W.

        With return_sequence=True also returns y_1..y_T as B x T x C x H x W.
        """
        omega, alpha, y, z = self.initial_state(x)
        dt_omega, damping = self.dt * omega, 1 - self.dt * alpha
        projection = self.readout.projection()
        if self.fused and projection is not None and not return_sequence:
            # same numbers, hand-written backward (models/nwm_fused.py); under bfloat16 autocast on a CPU
            # with bfloat16 matrix units the projection's products run there too, like the head's
            half = bf16_projection(x.device)
            fold = self.readout.folds_into_head()  # (fewer products for 16 channels, readouts.py)
            with torch.autocast(x.device.type, enabled=False):
                basis = self.readout.folded_basis() if fold else projection
                projected = wave_recurrence_projection(y, dt_omega, damping, self.coupling.weight, basis.to(y.dtype),
                                                       self.dt, self.bptt_segment or self.T, half)
            if fold:
                return self.readout.head.from_first_product(projected)
            return self.readout.head(self.readout.finish(projected))
        features, sequence = unroll(lambda s: self.step(s, dt_omega, damping), (y, z), self.T,
                                    self.readout, self.bptt_segment, return_sequence)
        logits = self.readout.head(features)
        return (logits, sequence) if return_sequence else logits
