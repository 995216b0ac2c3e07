"""Measuring the waves in a hidden sequence (T x ... x H x W, time first): phase, frequency,
direction, speed, directionality, and the dominant frequency of each object.

Every measure starts from the analytic signal over time of each pixel's series x_t
(mean removed): a_t = x_t + i H[x]_t, whose angle is the instantaneous phase phi_t and
whose modulus the envelope. Then, all in steps and pixels:

    frequency      f_t = angle(a_{t+1} conj(a_t)) / 2 pi                     cycles / step
    phase gradient g = (angle(a(y+1) conj(a(y-1))), angle(a(x+1) conj(a(x-1)))) / 2
                   (circular neighbours, as the models pad circularly)      radians / pixel
    direction      -g / |g|: for a wave cos(2 pi f t - k.x) the phase falls along k
    speed          2 pi f / |g|                                              pixels / step
    directionality |mean of -g/|g|| over a region: 1 for a plane wave, 0 for waves
                   going every way (noise, a radial wave seen whole)
    travelling     1 - |sum_x a_t^2| / sum_x |a_t|^2 (pooled over t): 0 for a standing
                   wave (one phase, up to sign, everywhere), 1 for a plane wave

Complex products instead of phase differences keep the 2 pi wrap-around out of every
difference. A pixel with no phase gradient (|g| <= FLAT, e.g. inside a standing wave or
a uniform region) has no direction: its unit vector counts as 0 and its speed is infinite.
"""
import numpy as np
import scipy.fft  # 25x numpy's FFT along the time axis of a 16 x 128 x 128 sequence
import scipy.ndimage

# |g| (radians per pixel) at or below which the phase counts as flat: a uniform phase's gradient
# is float64 rounding (about 1e-15), whose direction would otherwise be noise
FLAT = 1e-12


def analytic_signal(x):
    """The analytic signal along axis 0 (time) of real `x`, mean removed, by FFT: the
    negative frequencies dropped and the positive ones doubled."""
    x = np.asarray(x, float)
    x = x - x.mean(axis=0)
    T = len(x)
    h = np.zeros(T)
    h[0] = 1
    h[1:(T + 1) // 2] = 2
    if T % 2 == 0:
        h[T // 2] = 1
    return scipy.fft.ifft(scipy.fft.fft(x, axis=0) * h.reshape((T,) + (1,) * (x.ndim - 1)), axis=0)


def trimmed_analytic_signal(series, trim=0.1):
    """analytic_signal without its first and last `trim` of the steps, where the FFT's
    wrap-around gives it edge effects."""
    a = analytic_signal(series)
    cut = int(round(trim * len(a)))
    return a[cut:len(a) - cut]


def instantaneous_phase(a):
    """phi_t = angle(a_t), radians in (-pi, pi]."""
    return np.angle(a)


def angle_between(later, earlier):
    """angle(later conj(earlier)), the phase advance from `earlier` to `later`; 0 where either is 0 (a still
    pixel has no phase: its product, -0.0 in part, would give pi)."""
    return np.angle(later * np.conj(earlier) + 0.0)  # + 0.0 turns -0.0 into +0.0


def instantaneous_frequency(a):
    """f_t = angle(a_{t+1} conj(a_t)) / 2 pi in cycles per step; one step shorter than `a`."""
    return angle_between(a[1:], a[:-1]) / (2 * np.pi)


def phase_gradient(a):
    """(g_y, g_x) in radians per pixel over the last two axes, central differences with
    circular neighbours: g_x = angle(a(x+1) conj(a(x-1))) / 2."""
    def along(axis):
        return angle_between(np.roll(a, -1, axis), np.roll(a, 1, axis)) / 2
    return along(-2), along(-1)


def wave_direction(a, gradient=None):
    """Unit vectors (u_y, u_x) of the propagation direction -g/|g| (0 where |g| <= FLAT).
    `gradient`: phase_gradient(a) where the caller has it already."""
    gy, gx = phase_gradient(a) if gradient is None else gradient
    norm = np.hypot(gy, gx)
    moving = norm > FLAT
    safe = np.where(moving, norm, 1)
    return np.where(moving, -gy / safe, 0.0), np.where(moving, -gx / safe, 0.0)


def wave_speed(a, gradient=None, frequency=None):
    """2 pi f / |g| in pixels per step, per pixel and step (T - 1 steps: f is measured between
    steps t and t + 1, the gradient at step t); infinite where |g| <= FLAT. `gradient`,
    `frequency`: phase_gradient(a) and |instantaneous_frequency(a)| where the caller has them."""
    frequency = np.abs(instantaneous_frequency(a)) if frequency is None else frequency
    gy, gx = phase_gradient(a) if gradient is None else gradient
    norm = np.hypot(gy[:-1], gx[:-1])
    with np.errstate(divide="ignore", invalid="ignore"):  # where it is flat, the other branch
        return np.where(norm > FLAT, 2 * np.pi * frequency / norm, np.inf)


def directionality(a, region=None, direction=None):
    """|mean of the propagation unit vectors| over the pixels of `region` (H x W bool, all
    pixels if None) and every step: 1 when all go one way, near 0 when they go every way.
    `direction`: wave_direction(a) where the caller has it already."""
    uy, ux = wave_direction(a) if direction is None else direction
    if region is not None:
        uy, ux = uy[..., region], ux[..., region]
    return float(np.hypot(uy.mean(), ux.mean()))


def local_directionality(a, window=5, direction=None):
    """directionality in each window x window neighbourhood (circular), per step: T x ... x H x W.
    `direction`: wave_direction(a) where the caller has it already."""
    uy, ux = wave_direction(a) if direction is None else direction
    size = (1,) * (uy.ndim - 2) + (window, window)  # the mean over each window, wrapping like the models' padding
    return np.hypot(scipy.ndimage.uniform_filter(uy, size, mode="wrap"),
                    scipy.ndimage.uniform_filter(ux, size, mode="wrap"))


def travelling_index(a, region=None):
    """1 - sum |sum_x a^2| / sum sum_x |a|^2, the inner sums over the pixels x of `region`
    (all if None), the outer over steps and channels: 0 for a standing wave, near 1 for a
    wave whose phase runs through whole cycles in space. Channels are kept apart, as each
    may stand with its own phase."""
    a = a[..., region] if region is not None else a.reshape(a.shape[:-2] + (-1,))
    power = np.sum(np.abs(a) ** 2)
    return float(1 - np.sum(np.abs(np.sum(a ** 2, axis=-1))) / power) if power > 0 else float("nan")


def power_spectrum(series, region=None, pad_factor=16):
    """(frequencies in cycles/step, mean power) of the Hann-windowed, mean-removed series
    of the pixels of `region` (every leading axis after time averaged too), zero-padded
    `pad_factor` times for a finer frequency grid."""
    x = np.asarray(series, float)
    if region is not None:
        x = x[..., region]
    x = x.reshape(len(x), -1)
    x = (x - x.mean(axis=0)) * np.hanning(len(x))[:, None]
    n = pad_factor * len(x)
    return np.fft.rfftfreq(n), np.mean(np.abs(scipy.fft.rfft(x, n, axis=0)) ** 2, axis=1)


def dominant_frequency(series, region=None):
    """The peak of power_spectrum (DC excluded), placed between grid points by a parabola
    through the log power at the peak and its neighbours; cycles per step."""
    freqs, power = power_spectrum(series, region)
    log_power = np.log(power + 1e-300)
    k = int(np.argmax(log_power[1:-1])) + 1
    left, centre, right = log_power[k - 1:k + 2]
    curvature = left - 2 * centre + right
    offset = 0.5 * (left - right) / curvature if curvature < 0 else 0.0
    return float(freqs[k] + offset * (freqs[1] - freqs[0]))


def object_measures(sequence, mask, trim=0.1):
    """One row per class present in `mask` (H x W class ids, 0 = background) of the
    measures of `sequence` (T x C x H x W) over that class's pixels: median speed, median
    |frequency|, directionality, median local directionality, travelling index (all over the
    channels, without the first and last `trim` of the steps, where the analytic signal has
    edge effects) and dominant frequency (over all steps). Returns a list of dicts."""
    sequence = np.asarray(sequence, float)
    a = trimmed_analytic_signal(sequence, trim)
    gradient = phase_gradient(a)  # the costliest field: computed once for every measure
    direction = wave_direction(a, gradient)
    frequency = np.abs(instantaneous_frequency(a))
    speed = wave_speed(a, gradient, frequency)
    local = local_directionality(a, direction=direction)
    rows = []
    for label in np.unique(mask):
        if label == 0:
            continue
        region = mask == label
        rows.append(dict(label=int(label), pixels=int(region.sum()),
                         speed=float(np.median(speed[..., region])),
                         frequency=float(np.median(frequency[..., region])),
                         directionality=directionality(a, region, direction),
                         local_directionality=float(np.median(local[..., region])),
                         travelling=travelling_index(a, region),
                         dominant_frequency=dominant_frequency(sequence, region)))
    return rows
