"""Pieces shared by the models: convolutional encoders, the recurrence driver, and the rule
that decides when backpropagation through time recomputes instead of storing."""
import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint


def conv_stack(c_in, c_mid, c_out, num_layers, final_activation=None):
    """`num_layers` 3x3 convs (padding 1): c_in -> c_mid -> ... -> c_out, ReLU between.

    `final_activation` (a module, or None) follows the last conv.
    """
    layers, c = [], c_in
    for i in range(num_layers):
        last = i == num_layers - 1
        layers.append(nn.Conv2d(c, c_out if last else c_mid, 3, padding=1))
        if not last:
            layers.append(nn.ReLU())
        c = c_mid
    if final_activation is not None:
        layers.append(final_activation)
    return nn.Sequential(*layers)


AUTO_SEGMENT, AUTO_SEGMENT_BYTES = 10, 2**28
GPU_SHARE = 8  # of a GPU's memory for the stored steps: the rest holds encoders, head and other runs on it
STORED_PER_STEP = 16  # hidden-state-sized tensors backpropagation keeps per step (the ConvLSTM's, the most)


def auto_bptt_segment(recurrent, batch_size, T, hidden_channels, image_size, device="cpu"):
    """The `bptt_segment` of --bptt-segment auto (0: store every step).

    CPU: segments of AUTO_SEGMENT steps when a batch's float32 hidden sequence would exceed
    AUTO_SEGMENT_BYTES (what stays in cache), else 0. CUDA: 0 where every step's stored tensors
    fit in 1/GPU_SHARE of the GPU's memory, else the longest segment whose steps do.
    """
    if not recurrent:
        return 0
    H, W = image_size
    step_bytes = batch_size * hidden_channels * H * W * 4
    if torch.device(device).type != "cuda":
        return AUTO_SEGMENT if T * step_bytes > AUTO_SEGMENT_BYTES else 0
    budget = torch.cuda.get_device_properties(torch.device(device)).total_memory // GPU_SHARE
    fitting = budget // (STORED_PER_STEP * step_bytes)
    return 0 if fitting >= T else max(1, fitting)


def bf16_native_cpu():
    """Whether this CPU has bfloat16 matrix units (AVX512-BF16 or AMX); elsewhere PyTorch
    emulates bfloat16 products, many times slower than float32."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def bf16_projection(device):
    """Whether a fused recurrence projects its frames in bfloat16: inside a bfloat16 autocast
    region on a CPU with bfloat16 matrix units, where the head's products run too."""
    return device.type == "cpu" and torch.is_autocast_enabled("cpu") and bf16_native_cpu() \
        and torch.get_autocast_dtype("cpu") == torch.bfloat16


_bf16_coupling = False  # train.py / bench.py --bf16-coupling


def allow_bf16_coupling(allowed):
    """Let the NWM's CPU kernel run its coupling's products in bfloat16 where the projection
    does (--bf16-coupling on), or keep them float32 (off, the default: docs/speed.md has the
    bfloat16 coupling's errors over 100 steps)."""
    global _bf16_coupling
    _bf16_coupling = bool(allowed)


def bf16_coupling():
    """What allow_bf16_coupling last set (default: not allowed)."""
    return _bf16_coupling


def full_precision(t):
    """float32 for half-precision tensors (from an autocast region), else unchanged."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _run_segment(step, readout, num_steps, t0, keep_frames, state):
    frames = []
    for _ in range(num_steps):
        state, frame = step(state)
        frames.append(frame)
    return state, readout.partial_features(frames, t0), (frames if keep_frames else None)


def unroll(step, state, T, readout, bptt_segment=0, return_sequence=False):
    """Run `state, frame = step(state)` T times, feeding every frame to the readout.

    Returns (features for the readout's MLP, sequence B x T x C x H x W or None).

    bptt_segment > 0: backpropagation through time recomputes the recurrence segment by
    segment (activation checkpointing), so only the states at segment boundaries and
    the readout's features are kept between forward and backward, instead of every
    intermediate of every step. The arithmetic is the same; it costs one extra
    forward pass of the recurrence. 0 keeps everything.

    The recurrence runs in float32 (or float64) also inside a bfloat16 autocast region:
    the waves are a long chain of small increments that bfloat16 would round away.
    """
    state = tuple(full_precision(s) for s in state)
    use_checkpoint = bptt_segment > 0 and torch.is_grad_enabled()
    seg = bptt_segment if bptt_segment > 0 else T
    accumulated, frames = None, []
    with torch.autocast(state[0].device.type, enabled=False):
        for t0 in range(0, T, seg):
            n = min(seg, T - t0)
            args = (step, readout, n, t0, return_sequence, state)
            if use_checkpoint:
                # no RNG state to keep (no model draws random numbers); reading it breaks CUDA-graph capture
                state, partial, kept = checkpoint(_run_segment, *args, use_reentrant=False,
                                                  preserve_rng_state=False)
            else:
                state, partial, kept = _run_segment(*args)
            accumulated = readout.combine(accumulated, partial)
            if return_sequence:
                frames.extend(kept)
        features = readout.finish(accumulated)
    sequence = torch.stack(frames, dim=1) if return_sequence else None
    return features, sequence
