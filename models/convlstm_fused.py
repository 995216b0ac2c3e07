"""The ConvLSTM recurrence and its temporal readout on the CPU, with a hand-written backward pass.

Computes the same numbers as unrolling `ConvRNN.step` (cell "lstm") T times and projecting
the frames u_1..u_T on a time basis (the readouts other than max_time are a sum over time,
see readouts.py), in a compiled kernel (models/convlstm_kernel.c, built and run by
models/cpu_kernels.py) that runs each image through all T steps in cache instead of
launching a convolution, pads, gates and products over the whole batch at every step.

Forward step t (x = [u_{t-1}; h_{t-1}], * the gates' 3x3 circular convolution):
    i, f, o, g = sigmoid, sigmoid, sigmoid, tanh of (Wg * x + bg)
    c_t = f c_{t-1} + i g,   h_t = o tanh(c_t)
    m_t = relu(W1 h_t + b1),  u_t = W2 m_t + b2           (per pixel)
Backward step t, given gu = dL/du_t (its frame's gradient included), gh = dL/dh_t and
gc = dL/dc_t through later steps:
    gm = (m_t > 0) W2^T gu,   gh += W1^T gm
    gc += gh o (1 - tanh(c_t)^2)
    ga = [gc g i (1 - i), gc c_{t-1} f (1 - f), gh tanh(c_t) o (1 - o), gc i (1 - g^2)]   (dL/d(Wg * x + bg))
    dL/dc_{t-1} = gc f,   [dL/du_{t-1}; dL/dh_{t-1}] = Wg^T * ga   (Wg^T: the adjoint circular conv)
    dL/dWg += ga (x) x,  dL/dbg += ga,  dL/dW1 += gm (x) h_t,  dL/db1 += gm,  dL/dW2 += gu (x) m_t,  dL/db2 += gu
The kernel recomputes each image's steps in the backward pass, keeping one image's history
per thread: memory grows with the chunk of images (cpu_kernels.py), and bptt_segment does
not apply.
"""
import ctypes

import torch

from . import cpu_kernels

L, P, I = ctypes.c_long, ctypes.c_void_p, ctypes.c_int
ARGTYPES = dict(convlstm_forward=(L,) * 6 + (P,) * 5 + (I,), convlstm_backward=(L,) * 6 + (P,) * 10 + (I,))


def kernel(u):
    """The compiled kernel for state tensors like u (B x C x H x W), or None where it does
    not apply (not a float32/float64 CPU tensor) or could not be built."""
    if u.device.type != "cpu" or u.dtype not in cpu_kernels.DTYPES or u.dim() != 4:
        return None
    return cpu_kernels.load("convlstm", u.dtype, u.shape[1], **ARGTYPES)


class _ConvLSTMRecurrence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, lib, basis, half, u0, h0, c0, *params):
        states = [t.contiguous() for t in (u0, h0, c0)]
        theta = torch.cat([p.reshape(-1) for p in params]).to(u0.dtype)  # packed as the kernel reads them
        H, W, T = u0.shape[2], u0.shape[3], basis.shape[0]
        assert basis.dim() == 2  # the kernel writes time-major frames, not a per-channel basis' image-major ones

        def run(chunk, frames):
            cpu_kernels.parallel(lib.convlstm_forward, chunk.stop - chunk.start, H, W, T,
                                 *cpu_kernels.pointers(*(s[chunk] for s in states), theta), frames.data_ptr(), half)

        ctx.lib, ctx.half, ctx.params = lib, half, [(p.shape, p.dtype) for p in params]
        ctx.save_for_backward(basis, theta, *states)
        return cpu_kernels.projection(run, states[0], basis, half).view(*u0.shape, basis.shape[1])

    @staticmethod
    def backward(ctx, grad_projected):
        basis, theta, *states = ctx.saved_tensors
        B, H, W, T = states[0].shape[0], states[0].shape[2], states[0].shape[3], basis.shape[0]
        grads = [torch.empty_like(s) for s in states]
        g_theta = theta.new_zeros(B, theta.numel())  # per image, summed below

        def run(chunk, g_frames, frames):
            cpu_kernels.parallel(ctx.lib.convlstm_backward, chunk.stop - chunk.start, H, W, T,
                                 *cpu_kernels.pointers(*(s[chunk] for s in states), theta), g_frames.data_ptr(),
                                 *cpu_kernels.pointers(*(g[chunk] for g in grads), g_theta[chunk]),
                                 None if frames is None else frames.data_ptr(), ctx.half)

        g_basis = cpu_kernels.projection_backward(run, states[0], basis, grad_projected, ctx.needs_input_grad[1],
                                                  ctx.half)
        g_params = g_theta.sum(0).split([shape.numel() for shape, _ in ctx.params])
        g_params = (g.view(shape).to(dtype) for g, (shape, dtype) in zip(g_params, ctx.params))
        return None, g_basis, None, *grads, *g_params


def convlstm_projection(lib, u0, h0, c0, gates, mlp, basis, half=False):
    """sum_t u_t (x) basis[t] over the T = len(basis) ConvLSTM steps from (u0, h0, c0), B x C x H x W
    x K', with `lib` = kernel(u0). gates: the cell's 3x3 convolution; mlp: the per-pixel MLP
    (1x1 conv, ReLU, 1x1 conv). half: frames, basis and result in bfloat16 (cpu_kernels.projection)."""
    first, _, second = mlp
    return _ConvLSTMRecurrence.apply(lib, basis, half, u0, h0, c0, gates.weight, gates.bias, first.weight, first.bias,
                                     second.weight, second.bias)
