"""Can one hear the area of a square? Waves confined to a square of side s ring at
frequencies set by s (docs/methods.md, "Square-area theory"): simulate them with the NWM's
own step, compare the measured frequency with the grid theory, and classify a square's
area from one pixel's spectrum.
"""
import numpy as np
import pandas as pd
import torch

from metrics import confusion_matrix
from models.nwm import laplacian_coupling, oscillator_step

@torch.no_grad()
def simulate_squares(sides, T, dt=0.1, amplitudes=0.1, pixels=None):
    """Waves confined to squares: one time series per square, T x len(sides) (float64).

    Each square of side s is filled with its amplitude, embedded in a zero canvas, and
    run through the NWM's step with its Laplacian coupling, omega = 0 and alpha = 0. After
    every step the state outside the square is set back to zero (a Dirichlet boundary:
    the canvas is two pixels wider than the square on each side, so the coupling's
    circular padding only ever reads zeros). Squares of one side run as one batch.
    `pixels` ((row, col) inside each square, from its top-left corner) default to the centre.
    """
    sides = np.asarray(sides, int)
    amplitudes = np.broadcast_to(np.asarray(amplitudes, float), sides.shape)
    if pixels is None:
        pixels = np.stack([sides // 2, sides // 2], axis=1)
    coupling = laplacian_coupling(1).double()
    series = np.empty((T, len(sides)))
    for side in np.unique(sides):
        members = np.flatnonzero(sides == side)
        n, size = len(members), side + 4
        inside = torch.zeros(1, 1, size, size, dtype=torch.float64)
        inside[..., 2:2 + side, 2:2 + side] = 1
        y = inside * torch.as_tensor(amplitudes[members].copy())[:, None, None, None]
        z = torch.zeros_like(y)
        dt_omega, damping = torch.zeros_like(y), torch.ones_like(y)
        rows, cols = torch.as_tensor(pixels[members, 0] + 2), torch.as_tensor(pixels[members, 1] + 2)
        trace = torch.empty(T, n, dtype=torch.float64)
        for t in range(T):
            y, z = oscillator_step(y, z, coupling, dt_omega, damping, dt)
            y.mul_(inside), z.mul_(inside)
            trace[t] = y[torch.arange(n), 0, rows, cols]
        series[:, members] = trace.numpy()
    return series


def square_wave_series(side, T, dt=0.1, amplitude=0.1):
    """The centre pixel's time series (length T) of a square of side `side` (see simulate_squares)."""
    return simulate_squares([side], T, dt, amplitude)[:, 0]


def predicted_frequency(side, dt=0.1):
    """The (1,1) mode's frequency in cycles per step on the grid with zero state outside:
    lambda_11 = 4 [2 sin^2(pi / (2 (s + 1)))] and cos(theta) = 1 - dt^2 lambda / 2."""
    lam = 8 * np.sin(np.pi / (2 * (np.asarray(side, float) + 1))) ** 2
    return np.arccos(1 - dt ** 2 * lam / 2) / (2 * np.pi)


def measured_frequency(series, pad_factor=16):
    """The dominant frequency of a series in cycles per step.

    The mean is removed, a Hann window keeps the weaker modes' leakage off the peak, the
    series is zero-padded `pad_factor` times for a finer frequency grid, and a parabola
    through the log-magnitude peak and its neighbours places it between grid points.
    """
    x = np.asarray(series, float)
    x = (x - x.mean()) * np.hanning(len(x))
    n = pad_factor * len(x)
    spectrum = np.log(np.abs(np.fft.rfft(x, n)) + 1e-300)
    k = int(np.argmax(spectrum[1:-1])) + 1
    left, centre, right = spectrum[k - 1:k + 2]
    offset = 0.5 * (left - right) / (left - 2 * centre + right)
    return (k + offset) / n


def square_theory(sides=range(4, 33), T=4000, dt=0.1, amplitude=0.1):
    """Measured vs predicted frequency for each side: a DataFrame with periods and relative errors."""
    sides = np.asarray(list(sides))
    series = simulate_squares(sides, T, dt, amplitude)
    measured = np.array([measured_frequency(series[:, i]) for i in range(len(sides))])
    predicted = predicted_frequency(sides, dt)
    return pd.DataFrame({"side": sides, "area": sides ** 2, "predicted": predicted, "measured": measured,
                         "predicted_period": 1 / predicted,
                         "relative_error": np.abs(measured - predicted) / predicted})


def area_classifier(sides=range(4, 25), n_bins=7, T=1000, n_samples=600, dt=0.1, seed=0,
                    test_fraction=0.3, steps=(100, 250, 500)):
    """How well one pixel's spectrum tells a square's area.

    Samples squares of random side, a random pixel inside each and a random amplitude in
    [0.05, 0.15], and runs them for T steps. The feature vector is the pixel's magnitude
    spectrum (|rfft| of the series, scaled to unit maximum so the amplitude does not
    tell the area); the label is the area's bin (n_bins runs of consecutive sides, as
    equal as the sides allow). A standardised logistic regression is fit on one part
    and tested on the rest; the same is repeated on the first t steps for each t in
    `steps` (few steps cannot resolve the slow modes of large squares).
    Returns dict(accuracy, accuracy_by_steps {t: accuracy, T included}, chance,
    confusion (at T), bin_edges [(first side, last side)], labels, predictions).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    side_values = np.asarray(list(sides))
    drawn = rng.choice(side_values, n_samples)
    pixels = np.stack([rng.integers(0, drawn), rng.integers(0, drawn)], axis=1)
    series = simulate_squares(drawn, T, dt, rng.uniform(0.05, 0.15, n_samples), pixels)
    side_bins = np.array_split(side_values, n_bins)
    labels = np.searchsorted([b[-1] for b in side_bins], drawn)
    train, test = train_test_split(np.arange(n_samples), test_size=test_fraction, random_state=seed,
                                   stratify=labels)

    def fit(t):
        spectra = np.abs(np.fft.rfft(series[:t] - series[:t].mean(0), axis=0)).T
        features = spectra / spectra.max(1, keepdims=True)
        classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        classifier.fit(features[train], labels[train])
        return classifier.predict(features[test])

    accuracy_by_steps = {t: float((fit(t) == labels[test]).mean()) for t in steps if t < T}
    predictions = fit(T)
    accuracy_by_steps[T] = float((predictions == labels[test]).mean())
    return dict(accuracy=accuracy_by_steps[T], accuracy_by_steps=accuracy_by_steps,
                chance=float(np.bincount(labels[test]).max() / len(test)),
                confusion=confusion_matrix(torch.as_tensor(predictions), torch.as_tensor(labels[test]),
                                           n_bins).numpy(),
                bin_edges=[(int(b[0]), int(b[-1])) for b in side_bins],
                labels=labels[test], predictions=predictions)
