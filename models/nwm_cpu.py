"""The NWM recurrence on the CPU through its compiled kernel (models/nwm_kernel.c, built and
run by models/cpu_kernels.py): each image runs all T steps in cache, one pass per step."""
import ctypes
import math

import torch

from . import common, cpu_kernels

L, P, D, I = ctypes.c_long, ctypes.c_void_p, ctypes.c_double, ctypes.c_int
ARGTYPES = dict(nwm_forward=(L,) * 7 + (P,) * 5 + (D, P, L, L, I, P, I),
                nwm_backward=(L,) * 7 + (P,) * 7 + (D,) + (P,) * 7 + (L, L, I, I), nwm_half_coupling=(),
                nwm_winograd=())
# The fewest channels for the bfloat16 coupling: the 16-channel models gain (1.1x the float32 Winograd
# products, docs/speed.md), the 2-channel ones, whose coupling is a small part of their step, keep the float32 kernel
HALF_COUPLING_CHANNELS = 8


def kernel(y):
    """The compiled kernel for state tensors like y (B x C x H x W), or None where it does
    not apply (not a float32/float64 CPU tensor) or could not be built."""
    if y.device.type != "cpu" or y.dtype not in cpu_kernels.DTYPES or y.dim() != 4:
        return None
    return cpu_kernels.load("nwm", y.dtype, y.shape[1], **ARGTYPES)


def half_coupling(lib, channels, half):
    """Whether the kernel runs the coupling's products in bfloat16 (float32 sums): where the
    projection does (half), the build has AVX512-BF16 dot products for this channel count, the
    channels are many enough for it to pay, and common.bf16_coupling() allows it (--bf16-coupling on)."""
    return bool(half and channels >= HALF_COUPLING_CHANNELS and common.bf16_coupling() and lib.nwm_half_coupling())


def segment_length(T):
    """K = ceil(sqrt(T)) exactly (1 for T <= 1): the steps of the kernel's backward segments."""
    return math.isqrt(T - 1) + 1 if T > 1 else 1


def checkpoint_buffer(y0, T):
    """Where `projection` keeps (y, z) at the start of each backward segment but the first:
    B x segments-1 x 2 x C x H x W."""
    # T = 100, float32: 9 (y, z), 0.59 MB a Tetrominoes image (2 x 64 x 64), 19 MB a Multi-MNIST one (16 x 128 x 128)
    return y0.new_empty(len(y0), max(T - 1, 0) // segment_length(T), 2, *y0.shape[1:])


def projection(lib, y0, dt_omega, damping, weight, basis, dt, half=False, checkpoints=None, half_coupling=False):
    """sum_t y_t (x) basis[t] over the T = len(basis) steps from (y0, z0 = 0), as (B*C*H*W) x K'
    (basis T x K') or summed over the channels as (B*H*W) x K' (basis T x C x K'). half: frames,
    basis and the result in bfloat16 (cpu_kernels.projection has both). checkpoints: None
    (no backward will follow), or a `checkpoint_buffer` that receives what `projection_backward` needs.
    half_coupling: the coupling's products in bfloat16 (only where `half_coupling` said so)."""
    H, W, T = y0.shape[2], y0.shape[3], basis.shape[0]

    def run(chunk, frames):
        y, z = y0[chunk], torch.zeros_like(y0[chunk])
        cpu_kernels.parallel(lib.nwm_forward, len(y), H, W, T, segment_length(T),
                             *cpu_kernels.pointers(y, z, dt_omega[chunk], damping[chunk], weight), dt,
                             frames.data_ptr(), *frames.stride()[:2], half,
                             None if checkpoints is None else checkpoints[chunk].data_ptr(), half_coupling)

    return cpu_kernels.projection(run, y0, basis, half)


def projection_backward(lib, y0, dt_omega, damping, weight, basis, checkpoints, dt, grad_projected, need_basis,
                        half=False, half_coupling=False):
    """Gradients of `projection` with respect to y0, dt_omega, damping, weight and (if
    need_basis) basis, given that of its output (any strides) and the checkpoints it kept: each
    chunk recomputes its T steps, segment by segment from those, and runs the adjoint steps
    backwards (models/nwm_fused.py has the equations). half, half_coupling: as in `projection`
    (the coupling's adjoint products then in bfloat16 too)."""
    B, H, W, T = y0.shape[0], y0.shape[2], y0.shape[3], basis.shape[0]
    gy, g_dt_omega, g_damping = torch.zeros_like(y0), torch.zeros_like(y0), torch.zeros_like(y0)
    g_weight = y0.new_zeros(B, *weight.shape)
    adjoint_weight = weight.flip(2, 3).transpose(0, 1).contiguous()

    def run(chunk, g_frames, frames):
        assert frames is None or frames.stride() == g_frames.stride()  # the kernel reads one layout for both
        y = y0[chunk]
        z, gz = torch.zeros_like(y), torch.zeros_like(y)
        cpu_kernels.parallel(lib.nwm_backward, len(y), H, W, T, segment_length(T),
                             *cpu_kernels.pointers(y, z, checkpoints[chunk], dt_omega[chunk], damping[chunk], weight,
                                                   adjoint_weight), dt,
                             g_frames.data_ptr(),
                             *cpu_kernels.pointers(gy[chunk], gz, g_dt_omega[chunk], g_damping[chunk], g_weight[chunk]),
                             None if frames is None else frames.data_ptr(), *g_frames.stride()[:2], half,
                             half_coupling)

    g_basis = cpu_kernels.projection_backward(run, y0, basis, grad_projected, need_basis, half)
    return gy, g_dt_omega, g_damping, g_weight.sum(0), g_basis
