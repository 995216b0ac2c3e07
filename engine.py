"""One epoch of training and one pass of evaluation.

The whole split lives in memory (on the GPU when training there) and batches are drawn
by index: the datasets are small, and no worker processes means nothing to tune. As in
the paper's loader, the last partial training batch of each epoch is dropped, so every
training step has the same shape; evaluation covers every image.

A training step is forward, cross-entropy, backward and Adam step (`TrainStep`; on CUDA it
may be replayed from a captured graph instead, see GraphedTrainStep). Nothing inside an
epoch waits for the GPU (unless a --end-by-minutes deadline times its batches): losses and
metrics accumulate on the device and are read once, at the end of the epoch (or of a pause
between two batches), where a non-finite loss is caught.
"""
import contextlib
import math
import sys

import torch
import torch.nn.functional as F
from tqdm import tqdm

from metrics import SegmentationMetrics
from signals import Interrupted


class NonFiniteLossError(RuntimeError):
    pass


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


def batches(n, batch_size, device="cpu"):
    """Index tensors covering 0..n-1 in order, the last one smaller where batch_size does not divide n:
    an evaluation pass (a training pass is a TrainingPass)."""
    return [idx.to(device) for idx in torch.arange(n).split(batch_size)]


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
    """Puts back the weights and optimizer state saved before some training steps, in place, so that
    whatever holds these tensors sees the saved values. `optimizer_state` maps id(tensor) to its saved copy."""
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


class TrainingPass:
    """One epoch's pass over the shuffled training split, which may stop between two batches and go on
    later, in another process (train.py keeps it in last.pt): the batch order, how many batches are done,
    and the sums of their loss and metrics. The last partial batch is dropped (see the module's docstring)."""

    def __init__(self, order, batch_size, num_classes, device):
        self.order, self.batch_size, self.done = order.cpu(), batch_size, 0
        self.device_order = order.to(device)  # one copy per epoch: a copy to the GPU per batch would wait for it
        self.loss_sum = torch.zeros((), device=device)
        self.metrics = SegmentationMetrics(num_classes, device)

    @classmethod
    def shuffled(cls, n, batch_size, generator, num_classes, device):
        return cls(torch.randperm(n, generator=generator), batch_size, num_classes, device)

    @property
    def total(self):
        """Batches in the pass: the last partial one is dropped."""
        return len(self.order) // self.batch_size

    def batch(self, i):
        return self.device_order[i * self.batch_size:(i + 1) * self.batch_size]

    def state_dict(self):
        return dict(order=self.order, batch_size=self.batch_size, done=self.done, loss_sum=self.loss_sum.cpu(),
                    metrics=self.metrics.state_dict())

    @classmethod
    def from_state(cls, state, num_classes, device):
        training = cls(state["order"], state["batch_size"], num_classes, device)
        training.done = state["done"]
        training.loss_sum.copy_(state["loss_sum"])
        training.metrics.load_state_dict(state["metrics"])
        return training

    def mean_loss(self):
        """The mean training loss of the batches done (waits for the device)."""
        return self.loss_sum.item() / max(self.done, 1)


def train_one_epoch(step, images, masks, num_classes, batch_size, generator, progress=True, desc="train",
                    stop=None, training=None, pause=None):
    """Trains on the batches of `training` (a TrainingPass; by default a new one, shuffled by `generator`)
    not yet done. Returns the pass's training metrics, computed on the fly from each batch's
    (training-mode) predictions; or None when it stopped between two batches, `training` then holding
    what is done: a stop was asked for (`stop`, a StopSignals) or `pause()`, called before each batch, said so."""
    if training is None:
        training = TrainingPass.shuffled(len(images), batch_size, generator, num_classes, images.device)
    step.model.train()
    bar = tqdm(total=training.total, initial=training.done, desc=desc, leave=False, disable=not progress,
               dynamic_ncols=True)
    while training.done < training.total:
        if stop is not None:
            stop.tick()
            if stop.asked:
                return None
        if pause is not None and pause():
            return None
        idx = training.batch(training.done)
        y = masks[idx]
        logits, loss = step(images[idx], y)
        training.loss_sum += loss.detach()
        training.metrics.update(logits.detach(), y)
        training.done += 1
        bar.update()
        if progress and training.done % 10 == 1:  # reading the loss waits for the device: only for the bar
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    bar.close()
    mean_loss = training.mean_loss()  # the epoch's one wait for the device
    if not math.isfinite(mean_loss):
        raise NonFiniteLossError(f"the training loss became {mean_loss}")
    return training.metrics.compute()


@torch.no_grad()
def evaluate(model, images, masks, num_classes, batch_size=64, amp=False, progress=False, desc="eval",
             graphed=None, stop=None, tick=None):
    """Metrics (metrics.py) of `model` on a whole split, in eval mode. `graphed` (a forward pass
    for this batch size, a GraphedForward) runs the full batches; a smaller last batch runs
    eagerly, so every image counts exactly once. `stop` (a StopSignals) is checked between batches;
    `tick` (a StopSignals' tick, for a pass that a stop request does not cut short) is called there."""
    model.eval()
    metrics = SegmentationMetrics(num_classes, images.device)
    for idx in tqdm(batches(len(images), batch_size, device=images.device), desc=desc,
                    leave=False, disable=not progress, dynamic_ncols=True):
        if stop is not None:
            stop.check()
        if tick is not None:
            tick()
        if graphed is not None and len(idx) == batch_size:
            logits = graphed(images[idx])
        else:
            with autocast(images.device, amp):
                logits = model(images[idx])
        metrics.update(logits, masks[idx])
    return metrics.compute()


class CompileError(RuntimeError):
    """--compile on, and torch.compile failed; the message says what to use instead."""


def compiles(mode, device):
    """Whether --compile `mode` compiles on `device` (auto: on CUDA)."""
    return mode == "on" or (mode == "auto" and torch.device(device).type == "cuda")


# a readout head is entered by its features, or by its first layer's product where the readout is folded into it
HEAD_ENTRY_POINTS = ("forward", "from_first_product")


def maybe_compile(model, mode, device):
    """torch.compile for --compile `mode` (auto: on for CUDA). A recurrent model is compiled in
    parts: its encoders, its step (small and repeated T times, so one compiled graph is reused
    instead of unrolling all T steps; the NWM's hand-written recurrence, models/nwm_fused.py,
    stays as it is) and its readout head; a feed-forward model whole. The parts are compiled in
    place, as attributes of the instance that `uncompile` removes, so the model's state_dict keeps its keys."""
    if not compiles(mode, device):
        return model
    if model.recurrent:
        model.initial_state = torch.compile(model.initial_state, dynamic=False)
        model.step = torch.compile(model.step, dynamic=False)
        for name in HEAD_ENTRY_POINTS:
            setattr(model.readout.head, name, torch.compile(getattr(model.readout.head, name), dynamic=False))
        return model
    return torch.compile(model, dynamic=False)


def uncompile(model):
    """Undoes maybe_compile on the model it was given: the class's own methods show again."""
    if model.recurrent:
        for owner, name in ((model, "initial_state"), (model, "step"),
                            *((model.readout.head, name) for name in HEAD_ENTRY_POINTS)):
            owner.__dict__.pop(name, None)


def try_steps(compiled, model, x, y, amp):
    """One training forward and backward pass and one evaluation pass of `compiled` (maybe_compile's
    `model`) on a batch (x, y), then undone (weights, BatchNorm statistics, gradients, random state):
    torch.compile compiles a function at its first call, so this is where a compiler that cannot work fails."""
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    cuda = [x.device] if x.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda):
            model.train()
            with autocast(x.device, amp):
                logits = compiled(x)
            F.cross_entropy(logits.float(), y).backward()
            model.eval()
            with torch.no_grad(), autocast(x.device, amp):
                compiled(x)
    finally:
        model.zero_grad(set_to_none=True)
        model.load_state_dict(saved)
        model.train()


def compile_checked(model, mode, device, amp, x, y):
    """(the model to train, outcome) for --compile `mode`: maybe_compile's, once a first step on
    the batch (x, y) compiled (try_steps); if compiling fails, with auto, the eager model and a
    warning, as make_steps falls back from graph capture; with on, CompileError. `outcome`, for the
    run's records: "compiled", "off" or "failed: <the error's first line>"."""
    if not compiles(mode, device):
        return model, "off"
    compiled = maybe_compile(model, mode, device)
    try:
        try_steps(compiled, model, x, y, amp)
    except Interrupted:
        raise
    except Exception as e:  # whatever the compiler raises: no Triton, a C++ compiler error, an inductor bug
        uncompile(model)
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if mode == "on":
            raise CompileError(f"--compile on: torch.compile failed ({reason}); use --compile auto (falls back to "
                               f"eager steps) or off") from None
        print(f"warning: torch.compile failed ({reason}); training with eager steps", file=sys.stderr)
        return model, f"failed: {reason}"
    return compiled, "compiled"
