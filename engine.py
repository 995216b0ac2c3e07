"""One epoch of training and one pass of evaluation.

The whole split lives in memory (on the GPU when training there) and batches are drawn
by index: the datasets are small, and no worker processes means nothing to tune.
"""
import contextlib
import ctypes
import math

import torch
import torch.nn.functional as F
from tqdm import tqdm

from metrics import SegmentationMetrics


class NonFiniteLossError(RuntimeError):
    pass


def tune_cpu_allocator():
    """Let freed CPU memory be reused instead of handed back to the OS after every tensor.

    A training step allocates and frees tensors of hundreds of MB. By default glibc maps
    each large one fresh from the OS and unmaps it when freed, so the kernel zeroes every
    page again on first touch; on our 2-core test machine that was a quarter to a third
    of a CPU training step (bench.py, README "Speed"). Serving large blocks from the heap
    and never trimming it removes that cost, for a higher peak resident size (freed
    blocks stay with the process). Returns whether it could be applied (glibc only).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def bf16_supported(device):
    """Whether bfloat16 matrix products are fast here: CUDA, or a CPU with AVX512-BF16/AMX.

    Elsewhere (e.g. AVX2-only CPUs) PyTorch emulates them, many times slower than float32.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


def autocast(device, amp):
    """bfloat16 autocast for the convolutions and the readout head when `amp`.

    The models keep their recurrences in float32 inside the region (models/common.py).
    """
    device = torch.device(device)
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def batches(n, batch_size, generator=None, device="cpu"):
    """Index tensors covering 0..n-1, shuffled when a generator is given."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    return [idx.to(device) for idx in order.split(batch_size)]


def train_one_epoch(model, optimizer, images, masks, num_classes, batch_size, generator,
                    amp=False, progress=True, desc="train"):
    """One pass over the shuffled training split. Returns the training metrics, computed
    on the fly from each batch's (training-mode) predictions."""
    model.train()
    metrics = SegmentationMetrics(num_classes, images.device)
    bar = tqdm(batches(len(images), batch_size, generator, images.device), desc=desc,
               leave=False, disable=not progress, dynamic_ncols=True)
    for i, idx in enumerate(bar):
        x, y = images[idx], masks[idx]
        with autocast(images.device, amp):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(f"the training loss became {loss_value} at batch {i} of the epoch")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        metrics.update(logits.detach(), y)
        bar.set_postfix(loss=f"{loss_value:.4f}", refresh=False)
    return metrics.compute()


@torch.no_grad()
def evaluate(model, images, masks, num_classes, batch_size=64, amp=False, progress=False, desc="eval"):
    """Metrics (metrics.py) of `model` on a whole split, in eval mode."""
    model.eval()
    metrics = SegmentationMetrics(num_classes, images.device)
    for idx in tqdm(batches(len(images), batch_size, device=images.device), desc=desc,
                    leave=False, disable=not progress, dynamic_ncols=True):
        with autocast(images.device, amp):
            logits = model(images[idx])
        metrics.update(logits, masks[idx])
    return metrics.compute()
