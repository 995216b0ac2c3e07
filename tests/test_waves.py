"""Wave measurements on synthetic waves of known frequency, direction and speed, and the sounds."""
import wave

import numpy as np
import pytest
import torch

from analysis import sound, waves
from models import build_model

T, N = 200, 64
t = np.arange(T)[:, None, None]
y, x = np.arange(N)[None, :, None], np.arange(N)[None, None, :]


def plane_wave(f=0.05, k=(1, 2)):
    """cos(2 pi f t - k.x) with k = 2 pi (ky, kx) / N: whole cycles across the circular grid."""
    ky, kx = 2 * np.pi * np.array(k) / N
    return np.cos(2 * np.pi * f * t - ky * y - kx * x), np.array([ky, kx])


def test_plane_wave_frequency_direction_and_speed():
    f = 0.05
    signal, k = plane_wave(f)
    a = waves.analytic_signal(signal)
    assert np.median(waves.instantaneous_frequency(a)) == pytest.approx(f, rel=0.05)
    uy, ux = waves.wave_direction(a)
    assert (uy.mean(), ux.mean()) == pytest.approx(tuple(k / np.linalg.norm(k)), abs=0.05)
    assert np.median(waves.wave_speed(a)) == pytest.approx(2 * np.pi * f / np.linalg.norm(k), rel=0.05)
    assert waves.directionality(a) > 0.95
    assert waves.travelling_index(a) > 0.95
    assert waves.dominant_frequency(signal) == pytest.approx(f, rel=0.05)


def test_wave_going_the_other_way_reverses_the_direction():
    signal, k = plane_wave(k=(-3, 0))
    uy, ux = waves.wave_direction(waves.analytic_signal(signal))
    assert (uy.mean(), ux.mean()) == pytest.approx((-1, 0), abs=0.05)


def test_radial_wave_goes_outward_at_its_speed():
    f, wavelength = 0.04, 10
    r = np.hypot(y - N / 2, x - N / 2)[0]
    a = waves.analytic_signal(np.cos(2 * np.pi * f * t - 2 * np.pi * r / wavelength))
    ring = (r > 6) & (r < 24)
    assert np.median(waves.wave_speed(a)[..., ring]) == pytest.approx(f * wavelength, rel=0.05)
    uy, ux = waves.wave_direction(a)
    outward = (uy * (y - N / 2) + ux * (x - N / 2))[..., ring] / r[ring]
    assert outward.mean() > 0.95
    assert waves.directionality(a, ring) < 0.05  # seen whole, it goes every way...
    assert np.median(waves.local_directionality(a)[..., ring]) > 0.95  # ...but locally one way


def test_standing_wave_does_not_travel():
    f = 0.03
    signal = np.cos(2 * np.pi * 2 * x / N) * np.cos(2 * np.pi * y / N) * np.cos(2 * np.pi * f * t)
    a = waves.analytic_signal(signal)
    assert waves.travelling_index(a) < 0.05
    assert waves.directionality(a) < 0.1
    assert waves.dominant_frequency(signal) == pytest.approx(f, rel=0.05)


def test_a_uniform_phase_has_no_direction_whatever_the_rounding():
    # one oscillation everywhere, each pixel's series off by float64 rounding (as two FFT libraries differ)
    rounding = 1 + 1e-15 * np.random.default_rng(0).standard_normal((1, N, N))
    rounding[0, 0, 0] = 0  # and one pixel still: no frequency either
    a = waves.analytic_signal(np.cos(2 * np.pi * 0.05 * t) * rounding)
    uy, ux = waves.wave_direction(a)
    assert not uy.any() and not ux.any()
    assert np.isinf(waves.wave_speed(a)).all()
    assert waves.local_directionality(a).max() == 0


def test_noise_has_no_direction():
    noise = np.random.default_rng(0).standard_normal((T, N, N))
    a = waves.analytic_signal(noise)
    assert waves.directionality(a) < 0.05
    assert np.median(waves.local_directionality(a)) < 0.5


def test_object_measures_find_each_objects_frequency():
    mask = np.zeros((N, N), int)
    mask[5:20, 5:20], mask[30:60, 30:50] = 1, 2
    frequency = np.where(mask == 1, 0.05, 0.11)[None]
    signal, _ = plane_wave()
    sequence = np.cos(2 * np.pi * frequency * t)[:, None] + 0.1 * signal[:, None]  # T x 1 x H x W
    rows = {r["label"]: r for r in waves.object_measures(sequence, mask)}
    assert sorted(rows) == [1, 2] and rows[2]["pixels"] == 600
    assert rows[1]["dominant_frequency"] == pytest.approx(0.05, rel=0.05)
    assert rows[2]["dominant_frequency"] == pytest.approx(0.11, rel=0.05)
    assert rows[2]["frequency"] == pytest.approx(0.11, rel=0.05)


def test_sound_is_a_short_normalised_16khz_mono_wav(tmp_path):
    f = 0.05  # cycles per step -> 1 kHz
    series = np.cos(2 * np.pi * f * np.arange(400))[:, None, None] * np.ones((1, 3, 3))
    audio = sound.spectrum_to_audio(*waves.power_spectrum(series))
    assert np.abs(audio).max() == pytest.approx(sound.PEAK)
    power = np.abs(np.fft.rfft(audio)) ** 2
    hz = np.fft.rfftfreq(len(audio), 1 / sound.RATE)
    near = np.abs(hz - f * sound.HZ_PER_CYCLE_PER_STEP) < 0.1 * f * sound.HZ_PER_CYCLE_PER_STEP
    assert power[near].sum() > 0.9 * power.sum()  # the Hann window's main lobe is +-2/400 cycles/step
    path = sound.write_wav(tmp_path / "a.wav", audio)
    with wave.open(str(path)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16_000, 1, 2)
        assert w.getnframes() / w.getframerate() == pytest.approx(sound.SECONDS)
    assert path.stat().st_size < 200_000


@pytest.mark.parametrize("name, steps", [("nwm", 7), ("lstm", 5)])
def test_recurrent_models_return_their_sequence(name, steps):
    model = build_model(name, in_channels=3, num_classes=6, c_mid=4, hidden_channels=2, T=steps,
                        readout_width=8).eval()
    images = torch.rand(2, 3, 12, 10)
    with torch.no_grad():
        logits, sequence = model(images, return_sequence=True)
        plain = model(images)  # the NWM's fused path, which keeps no sequence
    assert logits.shape == (2, 6, 12, 10) and sequence.shape == (2, steps, 2, 12, 10)
    assert torch.allclose(logits, plain, atol=1e-5)
