"""The fast paths compute the same thing as the plain ones (outputs and gradients)."""
import shutil

import pytest
import torch
import torch.nn.functional as F

from engine import autocast
from models import MODEL_NAMES, READOUTS, build_model, convlstm_fused, cpu_kernels, head_cpu, is_recurrent, nwm_cpu
from models.nwm_fused import wave_recurrence_projection
from models.readouts import PixelMLP


@pytest.fixture
def eager_recurrence(monkeypatch):
    """The fused NWM without its compiled CPU kernel: the fallback where none can be built."""
    monkeypatch.setattr(nwm_cpu, "kernel", lambda y: None)


needs_compiler = pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")),
                                    reason="no C compiler: the kernels cannot be built here")


def outputs_and_gradients(name, dtype=torch.float64, amp=False, size=16, batch=3, T=12, **config):
    torch.manual_seed(0)
    model = build_model(name, in_channels=3, num_classes=4, T=T, **config).to(dtype)
    height, width = (size, size) if isinstance(size, int) else size
    x = torch.rand(batch, 3, height, width, dtype=dtype)
    target = torch.randint(0, 4, (batch, height, width))
    with autocast("cpu", amp):
        logits = model(x)
    F.cross_entropy(logits.float(), target).backward()
    return logits.detach().float(), {n: p.grad.float() for n, p in model.named_parameters()}


def assert_same(a, b, rtol, atol):
    torch.testing.assert_close(a[0], b[0], rtol=rtol, atol=atol)
    for name in a[1]:
        torch.testing.assert_close(a[1][name], b[1][name], rtol=rtol, atol=atol, msg=name)


@pytest.mark.parametrize("readout", READOUTS)
@pytest.mark.parametrize("segment", [0, 5])
def test_fused_nwm_matches_autograd(readout, segment):
    # float64 so that any difference is a wrong equation, not rounding
    plain = outputs_and_gradients("nwm", readout=readout, fused=False)
    fused = outputs_and_gradients("nwm", readout=readout, fused=True, bptt_segment=segment)
    assert_same(fused, plain, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("segment", [0, 5])
def test_fused_nwm_without_the_cpu_kernel_matches_autograd(eager_recurrence, segment):
    plain = outputs_and_gradients("nwm", fused=False)
    fused = outputs_and_gradients("nwm", fused=True, bptt_segment=segment)
    assert_same(fused, plain, rtol=1e-9, atol=1e-12)


def recurrence_and_gradients(channels, batch, H, W, segment=3, T=7):
    torch.manual_seed(0)
    shape = (batch, channels, H, W)
    y0, dt_omega, damping = torch.randn(shape), 0.1 * torch.rand(shape), 1 - 0.1 * torch.rand(shape)
    weight, basis = 0.5 * torch.randn(channels, channels, 3, 3), torch.randn(T, 4)
    inputs = [t.double().requires_grad_() for t in (y0, dt_omega, damping, weight, basis)]
    out = wave_recurrence_projection(*inputs, 0.1, segment)
    grads = torch.autograd.grad(out, inputs, torch.randn(out.shape, dtype=out.dtype))
    return out.detach(), grads


@needs_compiler
@pytest.mark.parametrize("channels, batch, H, W", [(2, 3, 16, 16), (16, 3, 5, 7), (3, 1, 2, 3), (2, 2, 1, 1)])
def test_cpu_kernel_matches_eager_steps(channels, batch, H, W, monkeypatch):
    # odd sizes and channel counts, and a batch the threads and the chunks split unevenly
    monkeypatch.setattr(cpu_kernels, "CHUNK_BYTES", 1)  # chunks of one image per thread
    assert nwm_cpu.kernel(torch.empty(batch, channels, H, W, dtype=torch.float64)) is not None
    fast = recurrence_and_gradients(channels, batch, H, W)
    monkeypatch.setattr(nwm_cpu, "kernel", lambda y: None)
    eager = recurrence_and_gradients(channels, batch, H, W)
    torch.testing.assert_close(fast[0], eager[0], rtol=1e-10, atol=1e-12)
    for a, b in zip(fast[1], eager[1]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.fixture
def no_compiler(tmp_path, monkeypatch):
    """A machine where no kernel can be built: a missing compiler and an empty kernel cache."""
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("WAVES_KERNEL_CACHE", str(tmp_path))
    cpu_kernels.load.cache_clear()
    yield
    cpu_kernels.load.cache_clear()


def test_cpu_kernel_falls_back_without_a_compiler(no_compiler, capsys):
    assert nwm_cpu.kernel(torch.empty(1, 5, 4, 4)) is None
    assert "using the eager recurrence" in capsys.readouterr().err
    plain = outputs_and_gradients("nwm", fused=False, hidden_channels=5)
    fused = outputs_and_gradients("nwm", fused=True, hidden_channels=5)
    assert_same(fused, plain, rtol=1e-9, atol=1e-12)


def test_fused_nwm_matches_autograd_in_float32():
    plain = outputs_and_gradients("nwm", dtype=torch.float32, fused=False)
    fused = outputs_and_gradients("nwm", dtype=torch.float32, fused=True, bptt_segment=5)
    assert_same(fused, plain, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
@needs_compiler
@pytest.mark.parametrize("channels, batch, size, readout", [(1, 3, 16, "linear"), (2, 3, (17, 13), "fft"),
                                                            (3, 5, (9, 15), "last"), (2, 1, 16, "mean_time"),
                                                            (2, 2, (2, 3), "linear")])
def test_convlstm_cpu_kernel_matches_autograd(channels, batch, size, readout, monkeypatch):
    # odd sizes and channel counts, and batches the threads and the chunks split unevenly
    monkeypatch.setattr(cpu_kernels, "CHUNK_BYTES", 1)  # chunks of one image per thread
    assert convlstm_fused.kernel(torch.empty(batch, channels, 4, 4, dtype=torch.float64)) is not None
    config = dict(hidden_channels=channels, size=size, batch=batch, readout=readout, T=7)
    fast = outputs_and_gradients("lstm", **config)
    monkeypatch.setattr(convlstm_fused, "kernel", lambda u: None)
    plain = outputs_and_gradients("lstm", **config)
    assert_same(fast, plain, rtol=1e-9, atol=1e-12)


@needs_compiler
def test_convlstm_cpu_kernel_matches_autograd_in_float32(monkeypatch):
    fast = outputs_and_gradients("lstm", dtype=torch.float32, T=10)
    monkeypatch.setattr(convlstm_fused, "kernel", lambda u: None)
    plain = outputs_and_gradients("lstm", dtype=torch.float32, T=10)
    assert_same(fast, plain, rtol=1e-4, atol=1e-6)


def test_convlstm_falls_back_without_a_compiler(no_compiler, capsys):
    assert convlstm_fused.kernel(torch.empty(1, 5, 4, 4)) is None
    assert "using the eager recurrence" in capsys.readouterr().err
    logits, grads = outputs_and_gradients("lstm", hidden_channels=5, T=6)
    assert torch.isfinite(logits).all() and all(torch.isfinite(g).all() for g in grads.values())


@pytest.mark.parametrize("name", [m for m in MODEL_NAMES if is_recurrent(m)])
def test_recomputed_segments_match_stored_steps(name, monkeypatch):
    monkeypatch.setattr(convlstm_fused, "kernel", lambda u: None)  # the eager steps, which the segments apply to
    extra = {"fused": False} if name == "nwm" else {}
    stored = outputs_and_gradients(name, bptt_segment=0, **extra)
    recomputed = outputs_and_gradients(name, bptt_segment=5, **extra)
    assert_same(recomputed, stored, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_bfloat16_autocast_stays_close_to_float32(name):
    # the stated bound: logits within 3% of their scale, and the gradient (all parameters
    # as one vector) pointing the same way (cosine >= 0.99; 0.95 for the U-Net, whose
    # BatchNorm statistics over the tiny 2x2 bottleneck maps are themselves noisy)
    size = 32 if name == "unet" else 16
    full = outputs_and_gradients(name, dtype=torch.float32, size=size)
    half = outputs_and_gradients(name, dtype=torch.float32, amp=True, size=size)
    assert (half[0] - full[0]).abs().max() <= 0.03 * full[0].abs().max()
    cosine = F.cosine_similarity(torch.cat([g.flatten() for g in full[1].values()]),
                                 torch.cat([g.flatten() for g in half[1].values()]), dim=0)
    assert cosine >= (0.95 if name == "unet" else 0.99)


def test_recurrence_stays_float32_under_autocast():
    model = build_model("nwm", in_channels=1, num_classes=2, T=4, fused=False)
    with autocast("cpu", True):
        _, sequence = model(torch.rand(1, 1, 8, 8), return_sequence=True)
    assert sequence.dtype == torch.float32


@pytest.mark.parametrize("config", ["tetrominoes_nwm", "tetrominoes_lstm", "tetrominoes_cnn8",
                                    "multi_mnist_nwm", "multi_mnist_unet4"])
def test_bench_reference_computes_what_the_project_computes(config):
    import bench
    output_err, grad_err = bench.check_equivalence(config, "cpu", batch=2, size=16)
    assert output_err < 1e-8 and grad_err < 1e-6


def test_bench_measures_a_training_step():
    import bench
    result = bench.measure("tetrominoes_cnn8", "project", batch_size=2, steps=1, device="cpu")
    assert result["seconds_per_step"] > 0 and result["images_per_second"] > 0
    assert result["peak_memory_bytes"] >= 0


@pytest.mark.skipif(not head_cpu.applies_anywhere(), reason="no oneDNN fused matrix products in this PyTorch")
@pytest.mark.parametrize("depth", [0, 1, 3])
def test_fused_cpu_head_matches_the_autocast_layers(depth, monkeypatch):
    # the same bfloat16 arithmetic: logits and gradients agree up to bfloat16 rounding
    def run(fused):
        monkeypatch.setattr(head_cpu, "applies", lambda x: fused and head_cpu.applies_anywhere())
        torch.manual_seed(0)
        head = PixelMLP(10, 4, width=32, depth=depth)
        features = torch.randn(2, 8, 8, 10, requires_grad=True)
        with autocast("cpu", True):
            logits = head(features)
        logits.float().square().mean().backward()
        return logits.detach().float(), {"features": features.grad, **{n: p.grad for n, p in head.named_parameters()}}

    fused, plain = run(True), run(False)
    assert_same(fused, plain, rtol=2e-2, atol=2e-2 * fused[0].abs().max().item())


@needs_compiler
def test_cpu_kernel_projects_in_bfloat16_close_to_float32(monkeypatch):
    # half=True: the same recurrence, its frames and the products with the basis rounded to bfloat16
    torch.manual_seed(0)
    shape, T = (3, 2, 16, 16), 12
    inputs = [torch.randn(shape), 0.1 * torch.rand(shape), 1 - 0.1 * torch.rand(shape),
              0.5 * torch.randn(2, 2, 3, 3), torch.randn(T, 7)]
    grad = torch.randn(*shape, 7)
    results = {}
    for half in (False, True):
        leaves = [t.clone().requires_grad_() for t in inputs]
        out = wave_recurrence_projection(*leaves, 0.1, T, half)
        out.backward(grad.to(out.dtype))
        results[half] = [out.detach().float()] + [t.grad for t in leaves]
    assert out.dtype == torch.bfloat16
    for full, half in zip(results[False], results[True]):
        assert (half - full).norm() <= 0.02 * full.norm()


@pytest.mark.skipif(not head_cpu.applies_anywhere(), reason="no oneDNN fused matrix products in this PyTorch")
def test_fused_cpu_head_stays_out_of_compiled_code():
    # torch.compile cannot lower oneDNN's fused products and fuses the plain head itself
    seen = []

    def head_input(x):
        seen.append(head_cpu.applies(x))
        return x + 1

    with autocast("cpu", True):
        assert head_cpu.applies(torch.ones(2))  # outside compiled code it runs
        torch.compile(head_input, backend="eager")(torch.ones(2))
    assert seen == [False]
