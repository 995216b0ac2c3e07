"""Models: parameter counts, the NWM equations, readouts, shapes and receptive fields."""
import numpy as np
import pytest
import torch

from models import MODEL_NAMES, READOUTS, build_model, count_parameters, is_recurrent
from models.nwm import LAPLACIAN
from models.readouts import TemporalReadout
from models.reference import build_reference, copy_weights

RECURRENT = [m for m in MODEL_NAMES if is_recurrent(m)]


@pytest.mark.parametrize("name, config, expected", [
    ("nwm", dict(in_channels=3, num_classes=6), 176_124),
    ("nwm", dict(in_channels=1, num_classes=11, hidden_channels=16, readout_width=32, readout_depth=5), 54_855),
    ("cnn", dict(in_channels=3, num_classes=6, depth=8), 173_422),
    ("lstm", dict(in_channels=3, num_classes=6, T=20), 151_046),
    ("unet", dict(in_channels=1, num_classes=11, width=2), 30_745),
    ("unet", dict(in_channels=1, num_classes=11, width=3), 68_834),
    ("unet", dict(in_channels=1, num_classes=11, width=4), 122_071),
    ("unet", dict(in_channels=1, num_classes=11, width=5), 190_456),
])
def test_parameter_counts_match_the_paper(name, config, expected):
    assert count_parameters(build_model(name, **config)) == expected


def test_laplacian_initialisation():
    model = build_model("nwm", hidden_channels=3)
    w = model.coupling.weight.detach()
    assert w.shape == (3, 3, 3, 3)
    for c_out in range(3):
        for c_in in range(3):
            expected = torch.tensor(LAPLACIAN) if c_out == c_in else torch.zeros(3, 3)
            assert torch.equal(w[c_out, c_in], expected)
    assert model.coupling.bias is None
    assert model.coupling.padding_mode == "circular"
    assert model.coupling.weight.requires_grad  # the coupling is trained


def _circular_laplacian(y):
    return (np.roll(y, 1, -1) + np.roll(y, -1, -1) + np.roll(y, 1, -2) + np.roll(y, -1, -2) - 4 * y)


def test_nwm_two_steps_match_hand_computation():
    torch.manual_seed(0)
    model = build_model("nwm", in_channels=1, num_classes=2, hidden_channels=1, T=2, dt=0.1).double()
    x = torch.rand(1, 1, 5, 6, dtype=torch.float64)
    omega, alpha, y0, z0 = (t.detach().numpy()[0, 0] for t in model.initial_state(x))
    assert (omega >= 0).all() and (alpha >= 0).all() and np.abs(y0).max() < 1
    assert not z0.any()  # the velocity starts at rest

    # by hand: velocity first, then position with the new velocity; circular boundary
    dt, y, z, expected = 0.1, y0, z0, []
    for _ in range(2):
        z = z + dt * (np.tanh(_circular_laplacian(y)) - omega * y - alpha * z)
        y = y + dt * z
        expected.append(y)

    _, sequence = model(x, return_sequence=True)
    assert sequence.shape == (1, 2, 1, 5, 6)
    np.testing.assert_allclose(sequence[0, :, 0].detach().numpy(), np.stack(expected), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("size", [(16, 16), (32, 24)])
def test_output_shapes_for_any_image_size(name, size):
    readouts = READOUTS if is_recurrent(name) else (None,)
    for readout in readouts:
        model = build_model(name, in_channels=3, num_classes=5, T=6, readout=readout)
        logits = model(torch.rand(2, 3, *size))
        assert logits.shape == (2, 5, *size)
        assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "lstm" else n for n in RECURRENT])
def test_recurrent_models_return_their_hidden_sequence_on_request(name):
    model = build_model(name, in_channels=1, num_classes=3, hidden_channels=4, T=7)
    x = torch.rand(2, 1, 16, 16)
    logits, sequence = model(x, return_sequence=True)
    assert sequence.shape == (2, 7, 4, 16, 16)
    torch.testing.assert_close(model.readout(sequence), logits)
    torch.testing.assert_close(model(x), logits)


def _readout(kind, T=16, channels=1):
    return TemporalReadout(kind, T, channels, num_classes=2)


def test_fft_readout_of_a_sinusoid_peaks_at_its_bin():
    T, freq = 32, 5
    t = torch.arange(T, dtype=torch.float32)
    sequence = torch.sin(2 * np.pi * freq * t / T + 0.3).view(1, T, 1, 1, 1)
    features = _readout("fft", T).features(sequence).flatten()
    assert features.shape == (T // 2 + 1,)
    assert features.argmax().item() == freq
    np.testing.assert_allclose(features.numpy(), np.abs(np.fft.rfft(sequence.flatten().numpy())), atol=1e-4)


def test_time_readouts_on_a_hand_made_sequence():
    T = 6
    seq = torch.tensor([0.0, 3.0, -1.0, 2.0, 5.0, 1.0]).view(1, T, 1, 1, 1).repeat(2, 1, 3, 4, 5)
    assert torch.equal(_readout("last", T, 3).features(seq), torch.full((2, 4, 5, 3), 1.0))
    assert torch.allclose(_readout("mean_time", T, 3).features(seq), torch.full((2, 4, 5, 3), 10 / 6))
    assert torch.equal(_readout("max_time", T, 3).features(seq), torch.full((2, 4, 5, 3), 5.0))
    linear = _readout("linear", T, 3)
    assert linear.time_weight.shape == (T, T // 2 + 1)
    expected = seq[0, :, 0, 0, 0] @ linear.time_weight
    got = linear.features(seq)
    assert got.shape == (2, 4, 5, 3 * (T // 2 + 1))
    torch.testing.assert_close(got[1, 2, 3, :T // 2 + 1], expected)  # channel 0 comes first


@pytest.mark.parametrize("kind", READOUTS)
def test_readouts_accumulated_in_segments_equal_the_whole_sequence(kind):
    torch.manual_seed(0)
    readout = _readout(kind, T=10, channels=2)
    seq = torch.randn(2, 10, 2, 3, 4)
    acc = None
    for t0, n in [(0, 3), (3, 3), (6, 4)]:
        acc = readout.combine(acc, readout.partial_features(list(seq[:, t0:t0 + n].unbind(1)), t0))
    torch.testing.assert_close(readout.finish(acc), readout.features(seq))


def test_fft_readout_gradient_is_finite_at_zero():
    readout = _readout("fft", T=8)
    seq = torch.zeros(1, 8, 1, 2, 2, requires_grad=True)
    readout(seq).sum().backward()
    assert torch.isfinite(seq.grad).all()


@pytest.mark.parametrize("name", RECURRENT)
def test_segmented_backprop_gives_the_same_gradients_as_storing(name):
    torch.manual_seed(0)
    x, target = torch.rand(2, 3, 16, 16), torch.randint(0, 4, (2, 16, 16))
    grads = []
    for segment in (0, 3):
        torch.manual_seed(1)
        model = build_model(name, in_channels=3, num_classes=4, T=8, bptt_segment=segment)
        loss = torch.nn.functional.cross_entropy(model(x), target)
        loss.backward()
        grads.append([p.grad for p in model.parameters()])
    for stored, recomputed in zip(*grads):
        torch.testing.assert_close(recomputed, stored, rtol=1e-5, atol=1e-7)


def _gradient_reach(model, size=41, dtype=torch.float64):
    """Largest horizontal distance from the centre at which the centre pixel's logits
    depend on the input (non-zero gradient), over a batch of random images so that a
    ReLU that happens to be off for one image does not hide a dependence."""
    model = model.to(dtype).eval()
    x = torch.randn(16, model_in_channels(model), size, size, dtype=dtype, requires_grad=True)
    c = size // 2
    model(x)[:, :, c, c].sum().backward()
    g = x.grad.abs().sum((0, 1))
    nonzero = torch.nonzero(g)
    return (nonzero - c).abs().max().item(), g


def model_in_channels(model):
    return next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d)).in_channels


@pytest.mark.parametrize("depth", [1, 3, pytest.param(6, marks=pytest.mark.slow)])
def test_cnn_output_pixel_sees_only_a_2L_plus_1_window(depth):
    torch.manual_seed(0)
    reach, grad = _gradient_reach(build_model("cnn", in_channels=1, num_classes=3, depth=depth, T=8))
    assert reach == depth  # (2L+1) x (2L+1) window centred on the pixel
    c = grad.shape[0] // 2
    outside = grad.clone()
    outside[c - depth:c + depth + 1, c - depth:c + depth + 1] = 0
    assert not outside.any()


@pytest.mark.slow
def test_nwm_reach_grows_with_the_number_of_steps():
    reaches = []
    for T in (2, 6, 12):
        torch.manual_seed(0)
        model = build_model("nwm", in_channels=1, num_classes=3, hidden_channels=2, T=T)
        reaches.append(_gradient_reach(model)[0])
    # one pixel per step through the 3x3 coupling, on top of the 4-conv position encoder
    assert reaches == [T + 4 for T in (2, 6, 12)]
    # a CNN of the NWM's encoder depth (4) reaches 4 pixels, whatever T is
    assert reaches[-1] > 3 * 4


def test_registry_errors_list_the_valid_choices():
    with pytest.raises(ValueError, match="valid models: nwm, lstm, gru, rnn, cnn, unet"):
        build_model("transformer")
    with pytest.raises(TypeError, match="unknown model keyword.*colour.*valid keywords: in_channels"):
        build_model("nwm", colour=3)
    with pytest.raises(ValueError, match="valid readouts: linear, fft, last, mean_time, max_time"):
        build_model("nwm", readout="median")
    with pytest.raises(ValueError, match="has no temporal readout"):
        build_model("cnn", readout="fft")


def test_registry_ignores_keywords_a_model_does_not_use():
    a = build_model("unet", in_channels=1, num_classes=11, width=2, T=100, readout="linear", depth=8)
    assert count_parameters(a) == 30_745


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "lstm" else n for n in MODEL_NAMES])
def test_every_model_and_readout_computes_the_papers_equations(name):
    # models/reference.py writes each model as the equations read; in float64, any
    # difference beyond rounding is a wrong equation in the fast path
    readouts = READOUTS if is_recurrent(name) else (None,)
    for readout in readouts:
        for fused in ((True, False) if name == "nwm" else (None,)):
            config = dict(in_channels=3, num_classes=4, T=12, readout=readout, depth=3, width=2, bptt_segment=5)
            if fused is not None:
                config["fused"] = fused
            torch.manual_seed(0)
            model = build_model(name, **config).double()
            reference = build_reference(name, **config).double()
            copy_weights(model, reference)
            x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
            target = torch.randint(0, 4, (2, 16, 16))
            results = []
            for m in (model, reference):
                logits = m(x)
                torch.nn.functional.cross_entropy(logits, target).backward()
                results.append((logits.detach(), [p.grad for p in m.parameters()]))
            (ours, our_grads), (theirs, their_grads) = results
            torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
            for p, q in zip(our_grads, their_grads):
                torch.testing.assert_close(p, q if q.shape == p.shape else q.t(), rtol=1e-9, atol=1e-12)
