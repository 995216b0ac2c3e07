"""cuda_graphs.py on the CPU: torch.cuda's streams and graph capture are replaced by fakes, so
the rules of a failed capture are checked on every machine (tests/test_cuda.py checks on a GPU
that graphed and eager steps compute the same)."""
import contextlib
from unittest import mock

import pytest
import torch

import cuda_graphs
import engine
from conftest import tiny_batch, tiny_model


@pytest.fixture
def fake_cuda_graphs(monkeypatch):
    """torch.cuda's streams as no-ops and a graph capture that fails, as it may on a GPU."""
    class Stream:
        def wait_stream(self, other):
            pass

    def failing_capture(graph):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a: Stream())
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: None)
    monkeypatch.setattr(torch.cuda, "graph", failing_capture)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)


# GPU path rule 2: a failed capture leaves the model and optimizer as they were before its warm-up steps
@pytest.mark.parametrize("steps_before", [0, 1])
def test_failed_capture_leaves_weights_and_optimizer_as_before(fake_cuda_graphs, steps_before):
    x, y = tiny_batch()
    results = []
    for capture in (False, True):
        model = tiny_model()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(steps_before):
            engine.TrainStep(model, optimizer, False)(x, y)
        if capture:
            with pytest.raises(RuntimeError, match="capturing"):
                cuda_graphs.GraphedTrainStep(model, optimizer, False, x, y)
        engine.TrainStep(model, optimizer, False)(x, y)  # the eager fallback's first step
        results.append([p.detach().clone() for p in model.parameters()])
    for eager, after_failed_capture in zip(*results):
        torch.testing.assert_close(after_failed_capture, eager, rtol=0, atol=0)


# GPU path rule 7: a failed capture is recorded, not only warned about
def test_make_steps_reports_a_failed_capture(monkeypatch):
    def failing(*args, **kwargs):
        raise RuntimeError("operation not permitted when stream is capturing\nmore lines")

    monkeypatch.setattr(cuda_graphs, "GraphedTrainStep", failing)
    model = tiny_model()
    split = mock.MagicMock(device=torch.device("cuda")), mock.MagicMock()  # stand for the training split on a GPU
    optimizer = torch.optim.Adam(model.parameters())
    step, forward, outcome = cuda_graphs.make_steps(model, optimizer, False, split, 4, "auto")
    assert type(step) is engine.TrainStep and forward is None
    assert outcome == "failed: operation not permitted when stream is capturing"
    with pytest.raises(RuntimeError):
        cuda_graphs.make_steps(model, optimizer, False, split, 4, "on")
    assert cuda_graphs.make_steps(model, optimizer, False, tiny_batch(), 4, "auto")[2] == "off"  # not on CUDA
