"""The NWM recurrence and its temporal readout with a hand-written backward pass.

Computes the same numbers as unrolling `NWM.step` T times and projecting the frames
y_1..y_T on a time basis (the linear, fft, last and mean_time readouts are all a sum
over time, see readouts.py), but

  * runs the steps without an autograd graph, into preallocated buffers, and never stores the sequence:
    each segment of frames is projected on the basis as soon as it is computed;
  * in the backward pass recomputes one segment at a time from the (y, z) saved at its
    start and runs the adjoint equations below, so memory grows with the segment
    length, not with T;
  * accumulates the coupling's weight gradient once per segment (one batched call)
    instead of once per step.

Forward step t (a = W * y with circular padding, damping = 1 - dt alpha, dt_omega = dt omega):
    z_t = damping z_{t-1} - dt_omega y_{t-1} + dt tanh(a_t),   a_t = W * y_{t-1}
    y_t = y_{t-1} + dt z_t
Backward step t, given gy = dL/dy_t and gz = dL/dz_t through later steps:
    Gz         = gz + dt gy                         (total dL/dz_t)
    Ga         = dt Gz (1 - tanh(a_t)^2)            (dL/da_t)
    dL/dy_{t-1} = gy - dt_omega Gz + W^T * Ga        (W^T: the adjoint circular conv)
    dL/dz_{t-1} = damping Gz
    dL/ddamping += Gz z_{t-1},  dL/ddt_omega -= Gz y_{t-1},  dL/dW += Ga (x) y_{t-1}
On the CPU the steps run in a compiled kernel (models/nwm_cpu.py, with segments of its
own) with the same arithmetic, where one can be built; the eager steps below are its fallback and
the path on other devices. tests/test_speed.py checks both against the autograd path.
"""
import torch
import torch.nn.functional as F

from . import nwm_cpu


def _pad(x):
    return F.pad(x, (1, 1, 1, 1), mode="circular")


def _step(y, z, dt_omega, damping, weight, dt, y_out, z_out, activation_out=None):
    """One step from (y, z) into the buffers (y_out, z_out), and tanh(a_t) into
    activation_out if given: the operations of NWM.step, writing straight into the
    buffers that keep the results instead of copying them there."""
    activation = torch.tanh(F.conv2d(_pad(y), weight), out=activation_out)
    torch.mul(damping, z, out=z_out).addcmul_(dt_omega, y, value=-1).add_(activation, alpha=dt)
    torch.add(y, z_out, alpha=dt, out=y_out)


def _frame_rows(frames, per_channel):
    """n x B x C x H x W frames as the left operand of their product with n steps of the basis:
    (B*C*H*W) x n for a basis shared by the channels, (B*H*W) x (n*C) for one per channel."""
    if per_channel:
        n, B, C, H, W = frames.shape
        return frames.permute(1, 3, 4, 0, 2).reshape(B * H * W, n * C)
    return frames.reshape(len(frames), -1).t()


def _segment_backward(y, z, dt_omega, damping, weight, adjoint_weight, dt, g_frames, gy, gz, g_dt_omega, g_damping):
    """The adjoint of one segment of n = len(g_frames) eager steps from (y, z), as
    nwm_cpu.projection_backward: returns y_0..y_n of the segment and the segment's gradient of the
    coupling's weight, and moves gy, gz to the segment's start and accumulates g_dt_omega,
    g_damping, in place."""
    n = g_frames.shape[0]
    # recompute the segment: the states before and after each step, and its tanh
    ys, zs, th = gy.new_empty(n + 1, *y.shape), gy.new_empty(n + 1, *y.shape), gy.new_empty(n, *y.shape)
    ys[0], zs[0] = y, z
    for i in range(n):
        _step(ys[i], zs[i], dt_omega, damping, weight, dt, ys[i + 1], zs[i + 1], th[i])
    g_activation = torch.empty_like(th)
    for i in reversed(range(n)):
        gy += g_frames[i].view_as(gy)
        gz.add_(gy, alpha=dt)  # now the total dL/dz_t
        g_damping.addcmul_(gz, zs[i])
        g_dt_omega.addcmul_(gz, ys[i], value=-1)
        ga = g_activation[i]  # dt Gz (1 - tanh^2)
        torch.mul(gz, th[i], out=ga).mul_(th[i]).neg_().add_(gz).mul_(dt)
        gy.addcmul_(dt_omega, gz, value=-1).add_(F.conv2d(_pad(ga), adjoint_weight))
        gz.mul_(damping)
    # the coupling's weight gradient for the whole segment in one call
    padded = _pad(ys[:n].flatten(0, 1)).contiguous(memory_format=torch.channels_last)
    g_weight = torch.nn.grad.conv2d_weight(
        padded, weight.shape, g_activation.flatten(0, 1).contiguous(memory_format=torch.channels_last))
    return ys, g_weight


class _WaveRecurrence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y0, dt_omega, damping, weight, basis, dt, segment, half, backward):
        T, per_channel = basis.shape[0], basis.dim() == 3
        B, C, H, W = y0.shape
        out_shape = (B, H, W, basis.shape[-1]) if per_channel else (B, C, H, W, basis.shape[-1])
        ctx.dt, ctx.segment, ctx.lib = dt, segment, nwm_cpu.kernel(y0)
        if ctx.lib is not None:
            inputs = [t.contiguous() for t in (y0, dt_omega, damping, weight, basis)]
            checkpoints = nwm_cpu.checkpoint_buffer(inputs[0], T) if backward else None
            ctx.half = half and y0.dtype == torch.float32
            ctx.half_coupling = nwm_cpu.half_coupling(ctx.lib, y0.shape[1], ctx.half)
            projected = nwm_cpu.projection(ctx.lib, *inputs, dt, ctx.half, checkpoints, ctx.half_coupling)
            ctx.save_for_backward(*inputs, checkpoints)
            return projected.view(out_shape)
        y, z = y0, torch.zeros_like(y0)
        z_buffers = (torch.empty_like(y0), torch.empty_like(y0))
        projected = None  # (B*C*H*W) x K', or (B*H*W) x K' for a per-channel basis
        starts = []
        for t0 in range(0, T, segment):
            n = min(segment, T - t0)
            starts += [y.clone(), z.clone()]
            frames = y.new_empty(n, *y.shape)
            for i in range(n):
                z_out = z_buffers[i % 2]
                _step(y, z, dt_omega, damping, weight, dt, frames[i], z_out)
                y, z = frames[i], z_out
            rows, steps = _frame_rows(frames, per_channel), basis[t0:t0 + n].reshape(-1, basis.shape[-1])
            projected = rows @ steps if projected is None else projected.addmm_(rows, steps)
        ctx.save_for_backward(dt_omega, damping, weight, basis, *starts)
        return projected.view(out_shape)

    @staticmethod
    def backward(ctx, grad_projected):
        if ctx.lib is not None:
            return *nwm_cpu.projection_backward(ctx.lib, *ctx.saved_tensors, ctx.dt, grad_projected,
                                                ctx.needs_input_grad[4], ctx.half, ctx.half_coupling), \
                None, None, None, None
        dt_omega, damping, weight, basis, *starts = ctx.saved_tensors
        dt, segment, T, per_channel = ctx.dt, ctx.segment, basis.shape[0], basis.dim() == 3
        B, C, H, W = starts[0].shape
        grad_projected = grad_projected.reshape(-1, basis.shape[-1])
        gy, gz = torch.zeros_like(starts[0]), torch.zeros_like(starts[0])
        g_dt_omega, g_damping = torch.zeros_like(dt_omega), torch.zeros_like(damping)
        g_weight = torch.zeros_like(weight)
        g_basis = torch.zeros_like(basis) if ctx.needs_input_grad[4] else None
        adjoint_weight = weight.flip(2, 3).transpose(0, 1)

        for k, t0 in reversed(list(enumerate(range(0, T, segment)))):
            n = min(segment, T - t0)
            if per_channel:  # (B*H*W) x (n*C) -> n x (B*C*H*W)
                g_frames = (grad_projected @ basis[t0:t0 + n].reshape(n * C, -1).t()).view(B, H, W, n, C)
                g_frames = g_frames.permute(3, 0, 4, 1, 2).reshape(n, -1)
            else:
                g_frames = basis[t0:t0 + n] @ grad_projected.t()  # n x (B*C*H*W)
            ys, g_segment = _segment_backward(starts[2 * k], starts[2 * k + 1], dt_omega, damping, weight,
                                              adjoint_weight, dt, g_frames, gy, gz, g_dt_omega, g_damping)
            g_weight += g_segment
            if g_basis is not None:
                g_segment_basis = _frame_rows(ys[1:], per_channel).t() @ grad_projected  # (n*C or n) x K'
                g_basis[t0:t0 + n] = g_segment_basis.view_as(g_basis[t0:t0 + n])
        return gy, g_dt_omega, g_damping, g_weight, g_basis, None, None, None, None


def wave_recurrence_projection(y0, dt_omega, damping, weight, basis, dt, segment, half=False):
    """sum_t y_t (x) basis[t] over the T = len(basis) NWM steps from (y0, z0 = 0).

    y0, dt_omega, damping: B x C x H x W; weight: C x C x 3 x 3; basis: T x K', the same for
    every channel, or T x C x K', one per channel, summed over the channels (a readout folded into
    its head's first layer, readouts.py). Returns B x C x H x W x K', or B x H x W x K' for a
    per-channel basis. The eager steps project the frames `segment` steps at a
    time, and their backward pass recomputes one segment at a time: longer segments mean
    fewer passes over the (large) projected features, shorter ones less memory. The CPU
    kernel ignores `segment`: its memory is bounded by its chunk of images (nwm_cpu.py), plus,
    where a backward pass will follow, ~sqrt(T) states per image kept for it.
    half: the CPU kernel projects bfloat16 frames on a bfloat16 basis into bfloat16 features
    (for a bfloat16 head on a CPU with bfloat16 matrix units); the recurrence stays float32,
    except that with many channels on a CPU with AVX512-BF16 the coupling's products run as
    bfloat16 dot products with float32 sums (nwm_cpu.half_coupling).
    """
    # (inside forward grad mode is off, and needs_input_grad does not say whether it was on)
    backward = torch.is_grad_enabled() and any(t.requires_grad for t in (y0, dt_omega, damping, weight, basis))
    return _WaveRecurrence.apply(y0, dt_omega, damping, weight, basis, dt, segment, half, backward)
