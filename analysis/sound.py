"""Hearing the shapes: an object's hidden-state spectrum played as sound.

The mapping: one model step lasts 1 / HZ_PER_CYCLE_PER_STEP seconds, so a wave of f cycles
per step sounds at f * HZ_PER_CYCLE_PER_STEP Hz (20,000: the NWM's dominant 0.01 cycles
per step becomes 200 Hz). A T-step series is far too short to play as it is (100 steps
last 5 ms), so its power spectrum (waves.power_spectrum: the Hann-windowed series of the
object's pixels and channels, zero-padded) is played instead, held for a few seconds:
noise shaped to the spectrum's amplitude (square root of the power) at the mapped
frequencies, so a sharp peak sounds as a tone and a broad one as a hiss; a sum of
sinusoids on the spectrum's frequency grid would add a buzz at the grid spacing.
Frequencies above the audio's Nyquist frequency are dropped. The sound is faded in and
out over FADE seconds, peak-normalised to PEAK of full scale, and written as 16 kHz mono
16-bit PCM.
"""
import wave

import numpy as np

HZ_PER_CYCLE_PER_STEP = 20_000.0
RATE, SECONDS, PEAK, FADE = 16_000, 2.0, 0.9, 0.02


def spectrum_to_audio(freqs, power, seconds=SECONDS, rate=RATE, hz_per_cycle_per_step=HZ_PER_CYCLE_PER_STEP,
                      seed=0):
    """A float waveform in [-PEAK, PEAK] of `seconds` at `rate` Hz whose amplitude spectrum is
    sqrt(power) under the mapping above: white noise (fixed seed) filtered in the frequency
    domain, the spectrum interpolated linearly between its grid points (freqs in cycles/step)."""
    n = int(round(seconds * rate))
    model_freqs = np.fft.rfftfreq(n, 1 / rate) / hz_per_cycle_per_step
    gain = np.interp(model_freqs, freqs, np.sqrt(power), left=0, right=0)
    gain[0] = 0  # no offset
    noise = np.random.default_rng(seed).standard_normal(n)
    audio = np.fft.irfft(np.fft.rfft(noise) * gain, n)
    t = np.arange(n) / rate
    audio *= np.minimum(1, np.minimum(t, t[-1] - t) / FADE)
    peak = np.abs(audio).max()
    return audio * (PEAK / peak) if peak > 0 else audio


def write_wav(path, audio, rate=RATE):
    """16-bit PCM mono WAV of a float waveform in [-1, 1]; returns the path."""
    samples = np.round(np.clip(audio, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(samples.tobytes())
    return path
