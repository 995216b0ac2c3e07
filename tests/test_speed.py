"""The fast paths compute the same thing as the plain ones (outputs and gradients)."""
import mmap
import shutil

import pytest
import torch
import torch.nn.functional as F

import runs
from engine import autocast
from models import MODEL_NAMES, READOUTS, build_model, convlstm_fused, cpu_kernels, head_cpu, is_recurrent, nwm_cpu
from models import common as models_common
from models import nwm as nwm_module
from models.nwm_fused import wave_recurrence_projection
from models.readouts import PixelMLP, TemporalReadout


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


FOLDING = dict(hidden_channels=16, readout_width=8, readout_depth=2)  # C*T*8 < C*T*7 + C*7*8 at T = 12


def test_readout_folds_into_the_head_only_where_it_saves_products():
    def folds(readout="linear", channels=16, width=32, depth=5, T=100):
        return TemporalReadout(readout, T, channels, 11, width, depth).folds_into_head()

    assert folds()  # the Multi-MNIST NWM: 51,200 multiply-adds a pixel instead of 107,712
    assert not folds(channels=2, width=256, depth=3)  # the Tetrominoes and MNIST NWMs: 51,200 instead of 36,312
    assert not folds(readout="fft") and not folds(readout="last")  # (|.| between the basis and the head; K = 1)
    assert not folds(depth=0)  # no hidden layer: no ReLU after the first product to keep


@pytest.mark.parametrize("kernel", [pytest.param(True, marks=needs_compiler), False])
@pytest.mark.parametrize("segment", [0, 5])
def test_nwm_with_its_readout_folded_into_the_head_matches_autograd(kernel, segment, monkeypatch):
    if not kernel:
        monkeypatch.setattr(nwm_cpu, "kernel", lambda y: None)
    bases = []
    projection = nwm_module.wave_recurrence_projection
    monkeypatch.setattr(nwm_module, "wave_recurrence_projection", lambda y, *a: bases.append(a[3].shape) or
                        projection(y, *a))
    plain = outputs_and_gradients("nwm", fused=False, **FOLDING)
    folded = outputs_and_gradients("nwm", fused=True, bptt_segment=segment, **FOLDING)
    assert bases == [(12, 16, 8)]  # T x C x width: the time map folded into the first layer
    assert_same(folded, plain, rtol=1e-9, atol=1e-12)


def test_folded_readout_check_fails_with_the_features_in_another_order(monkeypatch):
    # the head's features are channel-major (c*K + k); folding them as if time-feature-major must show
    monkeypatch.setattr(TemporalReadout, "folded_basis", lambda self: torch.einsum(
        "tk,okc->tco", self.time_weight, self.head.net[0].weight.view(-1, self.K, self.channels)))
    plain = outputs_and_gradients("nwm", fused=False, **FOLDING)
    wrong = outputs_and_gradients("nwm", fused=True, **FOLDING)
    with pytest.raises(AssertionError):
        assert_same(wrong, plain, rtol=1e-3, atol=1e-6)


def test_folded_readout_under_autocast_stays_close_to_float32():
    # test_bfloat16_autocast_stays_close_to_float32's bound
    full = outputs_and_gradients("nwm", dtype=torch.float32, **FOLDING)
    half = outputs_and_gradients("nwm", dtype=torch.float32, amp=True, **FOLDING)
    assert (half[0] - full[0]).abs().max() <= 0.03 * full[0].abs().max()
    cosine = F.cosine_similarity(torch.cat([g.flatten() for g in full[1].values()]),
                                 torch.cat([g.flatten() for g in half[1].values()]), dim=0)
    assert cosine >= 0.99


def recurrence_and_gradients(channels, batch, H, W, segment=3, T=7, per_channel_basis=False):
    torch.manual_seed(0)
    shape = (batch, channels, H, W)
    y0, dt_omega, damping = torch.randn(shape), 0.1 * torch.rand(shape), 1 - 0.1 * torch.rand(shape)
    weight = 0.5 * torch.randn(channels, channels, 3, 3)
    basis = torch.randn(T, channels, 4) if per_channel_basis else torch.randn(T, 4)
    inputs = [t.double().requires_grad_() for t in (y0, dt_omega, damping, weight, basis)]
    out = wave_recurrence_projection(*inputs, 0.1, segment)
    grads = torch.autograd.grad(out, inputs, torch.randn(out.shape, dtype=out.dtype))
    return out.detach(), grads


@needs_compiler
@pytest.mark.parametrize("channels, batch, H, W", [(2, 3, 16, 16), (16, 3, 5, 7), (3, 1, 2, 3), (2, 2, 1, 1),
                                                   (16, 2, 9, 20), (8, 1, 13, 5), (16, 1, 2, 3), (12, 2, 7, 11),
                                                   (16, 1, 1, 3), (16, 1, 3, 5), (8, 1, 4, 9), (16, 2, 2, 1)])
def test_cpu_kernel_matches_eager_steps(channels, batch, H, W, monkeypatch):
    # odd sizes and channel counts, and a batch the threads and the chunks split unevenly; with 8 or more
    # channels (Winograd's products) heights below, at and off multiples of the 4-row block and the 2-block
    # band, and 12 channels (the weight gradient 4 output channels at a time, not 8)
    monkeypatch.setattr(cpu_kernels, "CHUNK_BYTES", 1)  # chunks of one image per thread
    assert nwm_cpu.kernel(torch.empty(batch, channels, H, W, dtype=torch.float64)) is not None
    fast = recurrence_and_gradients(channels, batch, H, W)
    monkeypatch.setattr(nwm_cpu, "kernel", lambda y: None)
    eager = recurrence_and_gradients(channels, batch, H, W)
    torch.testing.assert_close(fast[0], eager[0], rtol=1e-10, atol=1e-12)
    for a, b in zip(fast[1], eager[1]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@needs_compiler
@pytest.mark.parametrize("chunk_bytes", [1, 2**26])
@pytest.mark.parametrize("channels, batch, H, W", [(16, 3, 5, 7), (2, 2, 4, 3)])
def test_cpu_kernel_with_a_per_channel_basis_matches_eager_steps(chunk_bytes, channels, batch, H, W, monkeypatch):
    # a basis per channel, summed over the channels: the kernel writes each image's frames in a row
    monkeypatch.setattr(cpu_kernels, "CHUNK_BYTES", chunk_bytes)  # one image per thread, or all at once
    fast = recurrence_and_gradients(channels, batch, H, W, per_channel_basis=True)
    assert fast[0].shape == (batch, H, W, 4)
    monkeypatch.setattr(nwm_cpu, "kernel", lambda y: None)
    eager = recurrence_and_gradients(channels, batch, H, W, per_channel_basis=True)
    torch.testing.assert_close(fast[0], eager[0], rtol=1e-10, atol=1e-12)
    for a, b in zip(fast[1], eager[1]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_a_per_channel_basis_sums_the_shared_projection_over_the_channels():
    # the definition, on the eager steps: one basis per channel, summed, is the shared projection per channel
    torch.manual_seed(0)
    y0, dt_omega, damping = torch.randn(2, 3, 4, 5), 0.1 * torch.rand(2, 3, 4, 5), 1 - 0.1 * torch.rand(2, 3, 4, 5)
    weight, basis = 0.5 * torch.randn(3, 3, 3, 3), torch.randn(6, 3, 2)
    args = [t.double() for t in (y0, dt_omega, damping, weight)]
    per_channel = wave_recurrence_projection(*args, basis.double(), 0.1, 6)
    shared = torch.stack([wave_recurrence_projection(*args, basis[:, c].double(), 0.1, 6)[:, c] for c in range(3)])
    torch.testing.assert_close(per_channel, shared.sum(0), rtol=1e-12, atol=1e-12)


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


needs_bf16_coupling = pytest.mark.skipif(
    not (shutil.which("cc") or shutil.which("gcc")) or "avx512_bf16" not in cpu_kernels.cpu_features(),
    reason="the bfloat16 coupling needs a C compiler and a CPU with AVX512-BF16")
SWAP_PAIRS = torch.arange(16).view(8, 2).flip(1).flatten()  # input channels 2p and 2p+1 swapped


def kernel_recurrence(dtype, shape, T=10, half_coupling=False, weight_layout=lambda w: w):
    """The kernel's projection and all its gradients (y0, dt_omega, damping, weight, basis) as
    float64, float frames; the kernel is handed weight_layout(weight) (a wrong layout: a fault)."""
    torch.manual_seed(0)
    channels = shape[1]
    inputs = [torch.randn(shape), 0.1 * torch.rand(shape), 1 - 0.02 * torch.rand(shape),
              0.3 * torch.randn(channels, channels, 3, 3), torch.randn(T, 4), torch.randn(*shape, 4)]
    y0, dt_omega, damping, weight, basis, grad = [t.to(dtype) for t in inputs]
    lib = nwm_cpu.kernel(y0)
    checkpoints = nwm_cpu.checkpoint_buffer(y0, T)
    weight = weight_layout(weight).contiguous()
    out = nwm_cpu.projection(lib, y0, dt_omega, damping, weight, basis, 0.1, False, checkpoints, half_coupling)
    grads = nwm_cpu.projection_backward(lib, y0, dt_omega, damping, weight, basis, checkpoints, 0.1, grad, True,
                                        False, half_coupling)
    return [out.double()] + [g.double() for g in grads]


def relative_errors(results, reference):
    return [((a - b).norm() / b.norm()).item() for a, b in zip(results, reference)]


BF16_COUPLING_TOLERANCE = 2e-2  # bfloat16's 8 bits through 10 steps: measured 1e-3 to 5e-3 at 16x16, T = 10


@needs_bf16_coupling
@pytest.mark.parametrize("shape", [(2, 16, 16, 16), (3, 16, 5, 7), (1, 16, 17, 50), (2, 16, 2, 20)])
def test_bf16_coupling_matches_float64_within_bfloat16_rounding(shape, monkeypatch):
    # image widths off the kernel's 16- and 32-pixel blocks, chunks the threads split unevenly, and two rows
    # (the adjoint's row order wraps at both ends at once)
    monkeypatch.setattr(cpu_kernels, "CHUNK_BYTES", 1)
    assert nwm_cpu.kernel(torch.empty(shape)).nwm_half_coupling() == 1
    reference = kernel_recurrence(torch.float64, shape)
    errors = relative_errors(kernel_recurrence(torch.float32, shape, half_coupling=True), reference)
    assert max(errors) < BF16_COUPLING_TOLERANCE, errors  # forward, and every gradient
    full = relative_errors(kernel_recurrence(torch.float32, shape), reference)
    assert max(full) < 1e-4 < min(errors), (full, errors)  # the float32 kernel: rounding only; this: bfloat16's


@needs_bf16_coupling
@pytest.mark.parametrize("layout", [lambda w: w[:, SWAP_PAIRS], lambda w: w.transpose(0, 1)],
                         ids=["pair-swapped", "transposed"])
def test_bf16_coupling_check_fails_with_a_wrong_weight_layout(layout):
    # the negative control of the test above: its check sees a weight packed in the wrong order
    reference = kernel_recurrence(torch.float64, (2, 16, 16, 16))
    errors = relative_errors(kernel_recurrence(torch.float32, (2, 16, 16, 16), half_coupling=True,
                                               weight_layout=layout), reference)
    assert min(errors) > 5 * BF16_COUPLING_TOLERANCE, errors


@needs_compiler
def test_winograd_products_run_for_eight_or_more_channels():
    assert nwm_cpu.kernel(torch.empty(1, 16, 4, 4)).nwm_winograd() == 1
    assert nwm_cpu.kernel(torch.empty(1, 8, 4, 4, dtype=torch.float64)).nwm_winograd() == 1
    assert nwm_cpu.kernel(torch.empty(1, 2, 4, 4)).nwm_winograd() == 0


WINOGRAD_FLOAT32_TOLERANCE = 2e-5  # float32 through F(4, 3)'s transforms: measured 1e-7 to 2e-6 here


@needs_compiler
@pytest.mark.parametrize("shape", [(2, 16, 16, 16), (1, 16, 9, 20)])
def test_float32_winograd_coupling_stays_within_float32_rounding(shape):
    reference = kernel_recurrence(torch.float64, shape)
    errors = relative_errors(kernel_recurrence(torch.float32, shape), reference)
    assert max(errors) < WINOGRAD_FLOAT32_TOLERANCE, errors  # forward, and every gradient


@needs_compiler
def test_float32_winograd_check_fails_with_a_transposed_weight():
    # the negative control of the test above: its check sees a weight handed over in the wrong order
    reference = kernel_recurrence(torch.float64, (2, 16, 16, 16))
    errors = relative_errors(kernel_recurrence(torch.float32, (2, 16, 16, 16), weight_layout=lambda w: w.transpose(0, 1)),
                             reference)
    assert min(errors) > 1000 * WINOGRAD_FLOAT32_TOLERANCE, errors


@pytest.fixture
def bf16_coupling_allowed(monkeypatch):
    """--bf16-coupling on, for one test."""
    monkeypatch.setattr(models_common, "_bf16_coupling", False)
    models_common.allow_bf16_coupling(True)


@needs_bf16_coupling
def test_bf16_coupling_runs_only_where_allowed_and_where_it_pays(monkeypatch):
    lib = nwm_cpu.kernel(torch.empty(1, 16, 4, 4))
    assert not nwm_cpu.half_coupling(lib, 16, half=True)  # off by default
    monkeypatch.setattr(models_common, "_bf16_coupling", False)
    models_common.allow_bf16_coupling(True)
    assert nwm_cpu.half_coupling(lib, 16, half=True)
    assert not nwm_cpu.half_coupling(lib, 16, half=False)  # no bfloat16 autocast: float32 throughout
    assert not nwm_cpu.half_coupling(nwm_cpu.kernel(torch.empty(1, 2, 4, 4)), 2, half=True)  # too few channels
    assert nwm_cpu.kernel(torch.empty(1, 16, 4, 4, dtype=torch.float64)).nwm_half_coupling() == 0


@needs_bf16_coupling
def test_sixteen_channel_nwm_under_autocast_takes_the_bf16_coupling(bf16_coupling_allowed, monkeypatch):
    # the model's path: with --bf16-coupling on, bfloat16 autocast on this CPU turns the coupling on, and
    # the model stays close to float32
    taken = []
    projection = nwm_cpu.projection
    monkeypatch.setattr(nwm_cpu, "projection", lambda *a: taken.append(a[-1]) or projection(*a))
    full = outputs_and_gradients("nwm", dtype=torch.float32, hidden_channels=16, T=10)
    half = outputs_and_gradients("nwm", dtype=torch.float32, amp=True, hidden_channels=16, T=10)
    assert taken == [False, True]
    assert (half[0] - full[0]).abs().max() <= 0.03 * full[0].abs().max()
    cosine = F.cosine_similarity(torch.cat([g.flatten() for g in full[1].values()]),
                                 torch.cat([g.flatten() for g in half[1].values()]), dim=0)
    assert cosine >= 0.99


@needs_bf16_coupling
def test_bf16_coupling_is_float64_steps_with_the_coupling_operands_in_bfloat16():
    # its error is bfloat16's rounding of y and W (before float32 sums), nothing else: the
    # kernel's y_T equals float64 steps that round them so, far closer than to exact float64
    torch.manual_seed(0)
    shape, T = (2, 16, 16, 16), 10
    y0, dt_omega, damping = torch.randn(shape), 0.1 * torch.rand(shape), 1 - 0.02 * torch.rand(shape)
    weight = 0.3 * torch.randn(16, 16, 3, 3)
    last = torch.zeros(T, 1)
    last[-1] = 1  # the projection on the last step: y_T
    y_T = nwm_cpu.projection(nwm_cpu.kernel(y0), y0, dt_omega, damping, weight, last, 0.1, False, None, True)

    def steps(round_operands):
        operand = (lambda t: t.bfloat16().double()) if round_operands else (lambda t: t)
        y, z = y0.double(), torch.zeros(shape, dtype=torch.float64)
        for _ in range(T):
            a = F.conv2d(F.pad(operand(y), (1, 1, 1, 1), mode="circular"), operand(weight.double()))
            z = damping.double() * z - dt_omega.double() * y + 0.1 * torch.tanh(a)
            y = y + 0.1 * z
        return y

    emulated, exact = steps(True), steps(False)
    error = lambda y: ((y_T.view(shape).double() - y).norm() / y.norm()).item()
    assert error(emulated) < 1e-5 and error(exact) > 1e-4, (error(emulated), error(exact))


def test_bench_names_any_dataset_and_model():
    import bench
    assert bench.parse_config("mnist_cnn16") == ("mnist", "cnn", {"depth": 16})
    assert bench.parse_config("multi_mnist_unet3") == ("multi_mnist", "unet", {"width": 3})
    assert bench.parse_config("mnist_lstm") == ("mnist", "lstm", {})
    assert bench.bench_config("multi_mnist_nwm")[1]["hidden_channels"] == 16
    for wrong in ("mnist_nwm3", "mnist_transformer", "imagenet_nwm", "mnist"):
        with pytest.raises(ValueError, match="DATASET_MODEL"):
            bench.parse_config(wrong)
    with pytest.raises(SystemExit):
        bench.build_parser().parse_args(["--configs", "mnist_nwm3"])


def test_bench_warms_up_until_a_step_maps_no_new_memory():
    import bench
    kept, calls = [], []

    def step(fresh_steps):
        calls.append(1)
        if len(calls) <= fresh_steps:
            fresh_memory = mmap.mmap(-1, 2 ** 25)  # 32 MB never touched (not a heap's reused pages): 8,192 new pages
            fresh_memory.write(b"\1" * 2 ** 25)
            kept.append(fresh_memory)

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for fresh, most, device, expected in [(2, 5, cpu, 3), (9, 4, cpu, 4), (0, 5, cpu, 1), (9, 5, cuda, 1)]:
        calls.clear()
        bench.warm_up(lambda: step(fresh), device, most=most)
        assert len(calls) == expected, (fresh, most, device)


def test_bench_paper_epoch_is_the_training_split_plus_the_validation_split():
    import bench
    # Tetrominoes: 10,000 training images at 100/s and 1,000 validation images at 50/s
    assert bench.paper_epoch_minutes("tetrominoes_nwm", 100, 50) == pytest.approx((100 + 20) / 60)


@needs_bf16_coupling
def test_bench_floor_counts_the_bf16_couplings_products(bf16_coupling_allowed):
    import bench
    T, batch = 6, 2
    model = build_model("nwm", in_channels=1, num_classes=3, T=T, hidden_channels=16, readout_width=8)
    x = torch.rand(batch, 1, 16, 16)

    def recorded(half, coupling):
        with bench.RecordMatmuls() as recorder, autocast("cpu", half):
            if coupling:
                with bench.RecordCoupling(recorder):
                    model(x).float().sum().backward()
            else:
                model(x).float().sum().backward()
        return len(recorder.calls)

    assert recorded(False, True) == recorded(False, False)  # float32 coupling: no products to count
    # per step and image: forward, recompute, input gradient (stencil) and the weight gradient
    assert recorded(True, True) - recorded(True, False) == 4 * T * batch


def test_bench_floor_replays_the_products_written_into_their_results():
    # the kernels' projections write into preallocated results (torch.mm(..., out=)): part of the floor too
    import bench
    a, b, out = torch.randn(8, 4), torch.randn(4, 3), torch.empty(8, 3)
    with bench.RecordMatmuls() as recorder:
        torch.mm(a, b, out=out)
    (func, args, kwargs), = recorder.calls
    assert func == torch.ops.aten.mm.out and kwargs["out"] == (out.size(), out.stride(), out.dtype)
    assert bench.time_matmuls(recorder.calls, 1, torch.device("cpu")) > 0


def test_bench_numerics_compares_each_precision_with_float64(run_train, tiny_dataset, tmp_path):
    """bench.py --numerics on a trained run: float32 agrees with float64 to rounding, bfloat16 autocast
    less so, and every parameter's gradient is measured."""
    import bench
    run_train(tmp_path, "--run-name", "r", "--epochs", "1", "--hidden-channels", "8")
    result = bench.precision_errors(tmp_path / "r", 4, tiny_dataset)
    errors = result["errors"]
    assert (result["dataset"], result["images"]) == ("tiny", 4)
    assert errors["float32"]["y_T"] < 1e-5 and max(errors["float32"]["gradients"].values()) < 1e-3
    assert errors["bf16 autocast"]["loss"] > 10 * errors["float32"]["loss"]
    model, _ = runs.load_model(tmp_path / "r")
    assert all(e["gradients"].keys() == dict(model.named_parameters()).keys() for e in errors.values())
    assert not models_common.bf16_coupling()  # the measurement leaves the coupling as train.py's default
