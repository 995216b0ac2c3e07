"""CUDA graphs (train.py --cuda-graph): a training step, or an evaluation forward pass, captured
once and replayed for every batch, which removes the launch overhead of thousands of small kernels.

Every replay runs on the same fixed input buffers, so a graph serves one batch shape: the
training steps (the last partial batch of an epoch is dropped) and evaluation's full batches.
`make_steps` picks graphed or eager steps (engine.TrainStep) for a run, falling back to eager
ones when capture fails.
"""
import sys

import torch
import torch.nn.functional as F

from engine import TrainStep, autocast, undo_steps


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
