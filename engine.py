"""One epoch of training and one pass of evaluation.

The whole split lives in memory (on the GPU when training there) and batches are drawn
by index: the datasets are small, and no worker processes means nothing to tune. As in
the paper's loader, the last partial training batch of each epoch is dropped, so every
training step has the same shape; evaluation covers every image.

A training step is forward, cross-entropy, backward and Adam step (`TrainStep`). On CUDA
it can be captured once in a CUDA graph and replayed for every batch (`GraphedTrainStep`,
train.py --cuda-graph), which removes the launch overhead of thousands of small kernels.
Nothing inside an epoch waits for the GPU: losses and metrics accumulate on the device
and are read once, at the end of the epoch, where a non-finite loss is caught.
"""
import contextlib
import math
import sys

import torch
import torch.nn.functional as F
from tqdm import tqdm

from metrics import SegmentationMetrics


class NonFiniteLossError(RuntimeError):
    pass


def precision(amp):
    """What a run computes in, for its records."""
    return "bf16 autocast" if amp else "float32"


def set_backends(device):
    """float32 computed in float32: TF32 off for cuDNN's convolutions and for matrix products (the
    recurrences are float32 in every run, and TF32 rounds them to 10 bits); on CUDA, cuDNN picks the
    fastest convolution algorithm for each shape, which pays off because every training step has one shape."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = torch.device(device).type == "cuda"


def autocast(device, amp):
    """bfloat16 autocast for the convolutions and the readout head when `amp`.

    The models keep their recurrences in float32 inside the region (models/common.py).
    """
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def batches(n, batch_size, generator=None, device="cpu", drop_last=False):
    """Index tensors covering 0..n-1, shuffled when a generator is given; `drop_last`
    leaves out a last batch smaller than batch_size."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    chunks = order.split(batch_size)
    if drop_last and chunks and len(chunks[-1]) < batch_size:
        chunks = chunks[:-1]
    return [idx.to(device) for idx in chunks]


class TrainStep:
    """Forward, cross-entropy over all pixels, backward, optimizer step; returns
    (logits, loss) as tensors, without waiting for the device."""

    def __init__(self, model, optimizer, amp):
        self.model, self.optimizer, self.amp = model, optimizer, amp

    def __call__(self, x, y):
        with autocast(x.device, self.amp):
            logits = self.model(x)
        loss = F.cross_entropy(logits.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return logits, loss


@torch.no_grad()
def undo_steps(model, optimizer, model_state, optimizer_state):
    """Puts back the weights and optimizer state saved before some training steps, in place (a
    captured graph holds these tensors). `optimizer_state` maps id(tensor) to its saved copy."""
    for k, v in model.state_dict().items():
        v.copy_(model_state[k])
    for s in optimizer.state.values():
        for t in s.values():
            if not torch.is_tensor(t):
                continue
            if id(t) in optimizer_state:
                t.copy_(optimizer_state[id(t)])
            else:  # created by the undone steps: a fresh optimizer's state is all zeros
                t.zero_()


class GraphedTrainStep(TrainStep):
    """The same step captured in one CUDA graph and replayed: every batch is copied into
    fixed input buffers, and the graph re-runs forward, backward and the optimizer step
    (which must be built with capturable=True) on them.

    Capturing needs a few warm-up steps on a side stream (allocations, kernel choices);
    they are undone afterwards, also when the capture fails, so the model and optimizer
    start from the state they were in and the graphed run (or the eager fallback) trains
    exactly as the eager one.
    """

    def __init__(self, model, optimizer, amp, x, y, warmup=3):
        super().__init__(model, optimizer, amp)
        model_state = {k: v.clone() for k, v in model.state_dict().items()}
        optimizer_state = {id(t): t.clone() for s in optimizer.state.values() for t in s.values()
                           if torch.is_tensor(t)}
        try:
            self._capture(x, y, warmup)
        finally:
            torch.cuda.synchronize()  # the side stream's steps are done (also after an error) before they are undone
            undo_steps(model, optimizer, model_state, optimizer_state)

    def _capture(self, x, y, warmup):
        model, optimizer, amp = self.model, self.optimizer, self.amp
        self.x, self.y = x.clone(), y.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                super().__call__(self.x, self.y)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        optimizer.zero_grad(set_to_none=True)  # the graph then allocates the gradients itself
        with torch.cuda.graph(self.graph):
            with autocast(x.device, amp):
                self.logits = model(self.x)
            self.loss = F.cross_entropy(self.logits.float(), self.y)
            self.loss.backward()
            optimizer.step()

    def __call__(self, x, y):
        self.x.copy_(x)
        self.y.copy_(y)
        self.graph.replay()
        return self.logits, self.loss


class GraphedForward:
    """Evaluation forward passes of one batch shape, captured in a CUDA graph (model in eval mode)."""

    def __init__(self, model, amp, x):
        self.x = x.clone()
        with torch.no_grad():
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), autocast(x.device, amp):
                model(self.x)
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph), autocast(x.device, amp):
                self.logits = model(self.x)

    def __call__(self, x):
        self.x.copy_(x)
        self.graph.replay()
        return self.logits


def train_one_epoch(step, images, masks, num_classes, batch_size, generator, progress=True, desc="train",
                    stop=None):
    """One pass over the shuffled training split, the last partial batch dropped. Returns the
    training metrics, computed on the fly from each batch's (training-mode) predictions.
    `stop` (a StopSignals) is checked between batches."""
    step.model.train()
    metrics = SegmentationMetrics(num_classes, images.device)
    loss_sum = torch.zeros((), device=images.device)
    bar = tqdm(batches(len(images), batch_size, generator, images.device, drop_last=True), desc=desc,
               leave=False, disable=not progress, dynamic_ncols=True)
    for i, idx in enumerate(bar):
        if stop is not None:
            stop.check()
        y = masks[idx]
        logits, loss = step(images[idx], y)
        loss_sum += loss.detach()
        metrics.update(logits.detach(), y)
        if progress and i % 10 == 0:  # reading the loss waits for the device: only for the bar
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    mean_loss = loss_sum.item() / max(len(bar), 1)  # the epoch's one wait for the device
    if not math.isfinite(mean_loss):
        raise NonFiniteLossError(f"the training loss became {mean_loss}")
    return metrics.compute()


@torch.no_grad()
def evaluate(model, images, masks, num_classes, batch_size=64, amp=False, progress=False, desc="eval",
             graphed=None, stop=None):
    """Metrics (metrics.py) of `model` on a whole split, in eval mode. `graphed` (a
    GraphedForward for this batch size) runs the full batches; a smaller last batch runs
    eagerly, so every image counts exactly once. `stop` (a StopSignals) is checked between batches."""
    model.eval()
    metrics = SegmentationMetrics(num_classes, images.device)
    for idx in tqdm(batches(len(images), batch_size, device=images.device), desc=desc,
                    leave=False, disable=not progress, dynamic_ncols=True):
        if stop is not None:
            stop.check()
        if graphed is not None and len(idx) == batch_size:
            logits = graphed(images[idx])
        else:
            with autocast(images.device, amp):
                logits = model(images[idx])
        metrics.update(logits, masks[idx])
    return metrics.compute()


def maybe_compile(model, mode, device):
    """torch.compile for --compile `mode` (auto: on for CUDA). A recurrent model is compiled in
    parts: its encoders, its step (small and repeated T times, so one compiled graph is reused
    instead of unrolling all T steps; the NWM's hand-written recurrence, models/nwm_fused.py,
    stays as it is) and its readout head; a feed-forward model whole. The parts are compiled in
    place, so the model's state_dict keeps its keys."""
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return model
    if model.recurrent:
        model.initial_state = torch.compile(model.initial_state, dynamic=False)
        model.step = torch.compile(model.step, dynamic=False)
        model.readout.head.compile(dynamic=False)
        return model
    return torch.compile(model, dynamic=False)


def make_steps(model, optimizer, amp, train_split, batch_size, cuda_graph="auto"):
    """(training step, graphed evaluation forward or None, outcome) for --cuda-graph `cuda_graph`
    (auto: on for CUDA, falling back to eager steps if capture fails). The graphs are captured
    on the first training batch's shape. `outcome`, for the run's records: "captured", "off", or
    "failed: <the error's first line>" (the fallback)."""
    eager = TrainStep(model, optimizer, amp)
    images, masks = train_split
    if cuda_graph == "off" or images.device.type != "cuda":
        return eager, None, "off"
    x, y = images[:batch_size], masks[:batch_size]
    try:
        step = GraphedTrainStep(model, optimizer, amp, x, y)
        forward = GraphedForward(model.eval(), amp, x)
        model.train()
        return step, forward, "captured"
    except RuntimeError as e:
        if cuda_graph == "on":
            raise
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"warning: CUDA graph capture failed ({reason}); training with eager steps", file=sys.stderr)
        return eager, None, f"failed: {reason}"
