"""The analyses behind the paper's tables and figures (SPEC section 6).

    score tables        results/scores.csv -> mean ± std and min / median / max over seeds
    square-area theory  a wave confined to a square of side s rings at a frequency set by s:
                        simulate it with the NWM's own step, compare with the grid theory,
                        and classify a square's area from one pixel's spectrum
    receptive fields    how far the input that moves one pixel's logits lies: growing with
                        the NWM's steps T, bounded by the CNN's depth

The notebooks in notebooks/ call these functions and plot with plotting.py.

    python analysis.py tables                      # results/scores.csv -> results/tables/
    python analysis.py squares                     # square-area theory: errors and accuracy
    python analysis.py erf                         # receptive-field radii of untrained models
"""
import argparse
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import runs
from metrics import METRIC_NAMES, confusion_matrix, iou_from_confusion
from models import build_model
from models.nwm import NWM
from produce_scores import variant

# -----------------------------------------------------------------------------
# where the notebooks read and write


def figure_settings():
    """The notebooks' inputs and outputs, from environment variables with defaults.

    WAVES_SCORES (results/scores.csv), WAVES_FIGURE_RUNS (results/runs: a runs root of
    small committed runs), WAVES_DATA_ROOT (./data), WAVES_FIGURES (results/figures),
    WAVES_TABLES (results/tables), WAVES_QUICK=1 (small sizes, for the tests).
    Relative defaults are taken from the repository root, whatever the current directory.
    """
    repo = Path(__file__).resolve().parent

    def path(env, default):
        return Path(os.environ[env]) if os.environ.get(env) else repo / default

    return dict(scores=path("WAVES_SCORES", "results/scores.csv"),
                runs=path("WAVES_FIGURE_RUNS", "results/runs"),
                data=path("WAVES_DATA_ROOT", "data"),
                figures=path("WAVES_FIGURES", "results/figures"),
                tables=path("WAVES_TABLES", "results/tables"),
                quick=os.environ.get("WAVES_QUICK", "0") not in ("", "0"))


def find_run(runs_root, dataset, model, readout=None, finished=True):
    """The run directory of `model` on `dataset` under `runs_root`, or None.

    Runs are picked by their config.json, not by their name; `readout` narrows recurrent
    models to one readout. Among several, the linear readout (the paper's main one) and
    then the lowest seed come first.
    """
    if not Path(runs_root).is_dir():
        return None
    matches = []
    for run_dir in runs.find_runs(runs_root):
        config = runs.load_json(run_dir / runs.CONFIG)
        if (config.get("dataset") == dataset and config.get("model") == model
                and readout in (None, config.get("readout"))
                and (runs.is_finished(run_dir) or not finished)):
            matches.append((config.get("readout") != "linear", config.get("seed", 0), str(run_dir), run_dir))
    return min(matches)[-1] if matches else None

# -----------------------------------------------------------------------------
# score tables

GROUP_KEYS = ("dataset", "data", "model", "variant", "T", "hidden_channels", "train_size")
STATISTICS = ("mean", "std", "min", "median", "max")


def variants(scores):
    """Each row's variant (produce_scores.variant), with CNN depths and U-Net widths
    printed as integers although a CSV column with empty cells reads back as float."""
    whole = scores.astype({k: "Int64" for k in ("depth", "width") if k in scores.columns})
    return [variant(row) for row in whole.to_dict("records")]


def score_tables(scores):
    """Per dataset x model x variant (readout, CNN depth or U-Net width): every metric's
    mean, std, min, median and max over seeds, with n_seeds and num_params.

    `scores` has one row per run (produce_scores.py). Runs that differ in T, hidden
    channels or training-set size are kept apart, so no group mixes configurations.
    Runs on other data (the `data` column) are kept apart too.
    Columns: the keys, n_seeds, num_params, then `<metric>_<statistic>`.
    """
    df = scores.copy()
    df["variant"] = variants(df)
    keys = [k for k in GROUP_KEYS if k in df.columns]
    metrics = [m for m in METRIC_NAMES if m in df.columns]
    grouped = df.groupby(keys, dropna=False, sort=True)
    table = grouped.agg(n_seeds=("model", "size"), num_params=("num_params", "first"))
    for metric in metrics:
        stats = grouped[metric].agg(list(STATISTICS))
        table[[f"{metric}_{s}" for s in STATISTICS]] = stats.to_numpy()
    table = table.reset_index()
    # "depth 16" after "depth 8": order variants by their number where they end in one
    number = pd.to_numeric(table["variant"].str.extract(r"(\d+)$")[0], errors="coerce")
    order = table.assign(_number=number).sort_values(["dataset", "model", "_number", "variant"], kind="stable")
    return table.loc[order.index].reset_index(drop=True)


# short column titles for the formatted tables
METRIC_TITLES = {"iou_foreground": "fg IoU", "acc_foreground": "fg acc", "miou": "mIoU", "acc": "acc",
                 "loss": "loss", "loss_foreground": "fg loss"}


def _formatted_rows(table):
    """Header and rows of strings: keys, n, params, each metric as mean ± std, and the
    min / median / max of the foreground IoU (the paper's headline metric)."""
    header = ["dataset", "data", "model", "variant", "n", "params"]
    metrics = [m for m in METRIC_TITLES if f"{m}_mean" in table.columns]
    header += [METRIC_TITLES[m] for m in metrics] + ["fg IoU min / median / max"]
    rows = []
    for r in table.to_dict("records"):
        variant_text = str(r["variant"])
        if "T" in r and not pd.isna(r["T"]):
            variant_text += f", T {int(r['T'])}"
        row = [r["dataset"], str(r.get("data", "")), r["model"], variant_text, str(r["n_seeds"]),
               f"{int(r['num_params']):,}"]
        # one seed has no spread: its value alone
        row += [f"{r[f'{m}_mean']:.3f}" + ("" if pd.isna(r[f"{m}_std"]) else f" ± {r[f'{m}_std']:.3f}")
                for m in metrics]
        row.append(" / ".join(f"{r[f'iou_foreground_{s}']:.3f}" for s in ("min", "median", "max")))
        rows.append(row)
    return header, rows


def to_markdown(table):
    header, rows = _formatted_rows(table)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _latex_escape(text):
    for char, escaped in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"),
                          ("#", r"\#"), ("±", r"$\pm$")):
        text = text.replace(char, escaped)
    return text


def to_latex(table):
    """A booktabs tabular (written by hand: pandas' to_latex needs jinja2)."""
    header, rows = _formatted_rows(table)
    lines = [r"\begin{tabular}{" + "lll" + "r" * (len(header) - 3) + "}", r"\toprule",
             " & ".join(_latex_escape(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(_latex_escape(c) for c in row) + r" \\" for row in rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_tables(table, out_dir, name="scores"):
    """Writes <name>.csv (every statistic), <name>.tex and <name>.md (formatted) to out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.{ext}" for ext in ("csv", "tex", "md")]
    table.to_csv(paths[0], index=False)
    paths[1].write_text(to_latex(table))
    paths[2].write_text(to_markdown(table))
    return paths

# -----------------------------------------------------------------------------
# square-area theory: "can one hear the area of a square?"


def _wave_step():
    """The NWM's own step with one wave channel and its Laplacian coupling."""
    return NWM(in_channels=1, num_classes=2, c_mid=1, hidden_channels=1, T=1, readout="last",
               readout_width=1, readout_depth=0).double()


@torch.no_grad()
def simulate_squares(sides, T, dt=0.1, amplitudes=0.1, pixels=None):
    """Waves confined to squares: one time series per square, T x len(sides) (float64).

    Each square of side s is filled with its amplitude, embedded in a zero canvas, and
    run through NWM.step with the Laplacian coupling, omega = 0 and alpha = 0. After
    every step the state outside the square is set back to zero (a Dirichlet boundary:
    the canvas is two pixels wider than the square on each side, so the coupling's
    circular padding only ever reads zeros). Squares of one side run as one batch.
    `pixels` ((row, col) inside each square, from its top-left corner) default to the centre.
    """
    sides = np.asarray(sides, int)
    amplitudes = np.broadcast_to(np.asarray(amplitudes, float), sides.shape)
    if pixels is None:
        pixels = np.stack([sides // 2, sides // 2], axis=1)
    step = _wave_step()
    step.dt = dt
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
            (y, z), _ = step.step((y, z), dt_omega, damping)
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
    from sklearn.metrics import confusion_matrix
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
                confusion=confusion_matrix(labels[test], predictions, labels=range(n_bins)),
                bin_edges=[(int(b[0]), int(b[-1])) for b in side_bins],
                labels=labels[test], predictions=predictions)

# -----------------------------------------------------------------------------
# effective receptive fields


def effective_receptive_field(model, images, pixel):
    """|d logits(pixel) / d input|, summed over classes, input channels and images: H x W.

    images: C x H x W, or N x C x H x W to sum the maps of N images (the ERF of a model
    is usually averaged over inputs: one image can leave a ReLU network's gradient zero
    at a pixel). One backward pass per class, as a sum of the logits before the
    absolute value would let classes cancel. pixel: (row, col).
    """
    model.eval()
    x = images.reshape(-1, *images.shape[-3:]).float().detach().requires_grad_(True)
    logits = model(x)
    row, col = pixel
    erf = torch.zeros(x.shape[-2:])
    num_classes = logits.shape[1]
    for c in range(num_classes):
        (grad,) = torch.autograd.grad(logits[:, c, row, col].sum(), x, retain_graph=c < num_classes - 1)
        erf += grad.abs().sum((0, 1))
    return erf.numpy()


def radius_of_mass(erf_map, pixel, fraction=0.9):
    """The smallest Euclidean distance from `pixel` within which `fraction` of the map's
    total mass lies (NaN for an all-zero map)."""
    erf_map = np.asarray(erf_map, float)
    total = erf_map.sum()
    if total <= 0:
        return math.nan
    rows, cols = np.indices(erf_map.shape)
    distance = np.hypot(rows - pixel[0], cols - pixel[1]).ravel()
    order = np.argsort(distance, kind="stable")
    mass = np.cumsum(erf_map.ravel()[order])
    return float(distance[order][np.searchsorted(mass, fraction * total)])


def copy_matching_weights(source, target):
    """Copies every parameter and buffer of `source` whose name and shape `target` shares."""
    target_state = target.state_dict()
    shared = {k: v for k, v in source.state_dict().items()
              if k in target_state and target_state[k].shape == v.shape}
    target_state.update(shared)
    target.load_state_dict(target_state)
    return sorted(shared)


def model_variant(name, config, seed=0, source=None, **changes):
    """build_model(name, **config, **changes) initialised from `seed`, in eval mode.

    The same seed gives the same encoders and coupling for every T (they are built before
    the readout); with a trained `source` model its weights are copied wherever the
    shapes match, so an NWM "truncated" to fewer steps keeps its trained encoders and
    coupling (the readout, whose shape depends on T, stays freshly initialised).
    """
    torch.manual_seed(seed)
    model = build_model(name, **{**config, **changes})
    if source is not None:
        copy_matching_weights(source, model)
    return model.eval()


def mean_erf(name, config, images, pixel, seeds, source=None, **changes):
    """The ERF of model_variant(name, ...) averaged over initialisation seeds.

    Each seed's map is scaled to unit mass first, so the average is one of shapes, not
    of gradient scales. A map that is zero everywhere (a ReLU network dead at that
    pixel for every image, common for deep untrained CNNs) is left out and counted.
    Returns (map, number of dead seeds); the map is all zero when every seed was dead.
    """
    maps, dead = [], 0
    for seed in seeds:
        erf = effective_receptive_field(model_variant(name, config, seed, source, **changes), images, pixel)
        if erf.sum() > 0:
            maps.append(erf / erf.sum())
        else:
            dead += 1
    return (np.mean(maps, axis=0) if maps else np.zeros(images.shape[-2:])), dead


def erf_radii(images, pixel, nwm_steps=(5, 10, 20, 50, 100, 200, 400), cnn_depths=(2, 4, 8, 16, 32),
              config=None, seeds=(0, 1, 2), fraction=0.9, nwm_source=None):
    """ERF radius of NWMs run for T steps and of CNNs of each depth, over the same images.

    Returns (DataFrame with columns model, steps_or_depth, radius, bound, dead_seeds;
    dict (model, T or depth) -> mean ERF map). `bound` is the CNN's hard limit, the
    corner of its (2L+1) x (2L+1) window at distance sqrt(2) L; the NWM has none (its
    strict receptive field grows by a pixel per step). `config`: build_model keywords
    shared by both (default: Tetrominoes-sized models with as many input channels as
    the images). `nwm_source`: a trained NWM whose weights the NWMs start from.
    """
    config = dict(in_channels=images.shape[-3], num_classes=6, c_mid=16, hidden_channels=2,
                  **(config or {}))
    rows, maps = [], {}
    for name, values in (("nwm", nwm_steps), ("cnn", cnn_depths)):
        for value in values:
            changes = dict(T=value, fused=False) if name == "nwm" else dict(depth=value)
            source = nwm_source if name == "nwm" else None
            maps[name, value], dead = mean_erf(name, config, images, pixel, seeds, source, **changes)
            rows.append(dict(model=name, steps_or_depth=value, radius=radius_of_mass(maps[name, value], pixel, fraction),
                             bound=math.sqrt(2) * value if name == "cnn" else math.nan, dead_seeds=dead))
    return pd.DataFrame(rows), maps


def probe_images(n=4, size=64, channels=3, seed=0):
    """Random images (uniform in [0, 1], N x C x H x W) to probe untrained models' receptive fields."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, size, size, generator=generator)

# -----------------------------------------------------------------------------
# looking inside trained runs


@torch.no_grad()
def hidden_sequence(model, image):
    """(logits K x H x W, hidden sequence T x C x H x W) of a recurrent model for one C x H x W image."""
    logits, sequence = model(image[None], return_sequence=True)
    return logits[0], sequence[0]


@torch.no_grad()
def temporal_feature_maps(model, sequence):
    """What the readout makes of each pixel's time series: H x W x C x K.

    For the linear readout the projection of the sequence on the learned T -> K basis,
    for fft the magnitude of each frequency bin (readouts.TemporalReadout.features).
    sequence: T x C x H x W.
    """
    features = model.readout.features(sequence[None])[0]  # H x W x (C * K)
    H, W, _ = features.shape
    return features.reshape(H, W, model.readout.channels, model.readout.K)


@torch.no_grad()
def predict(model, images, batch_size=32):
    """Predicted class maps (N x H x W) for N x C x H x W images."""
    return torch.cat([model(chunk).argmax(1) for chunk in images.split(batch_size)])


def confusion_and_iou(predictions, masks, num_classes):
    """(confusion matrix, rows = true class; per-class IoU, NaN for absent classes) as numpy."""
    confusion = confusion_matrix(predictions, masks, num_classes)
    return confusion.numpy(), iou_from_confusion(confusion).numpy()

# -----------------------------------------------------------------------------
# command line


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("analysis", choices=["tables", "squares", "erf"])
    parser.add_argument("--scores", default=None, help="score CSV (default: $WAVES_SCORES or results/scores.csv)")
    parser.add_argument("--out", default=None, help="tables folder (default: $WAVES_TABLES or results/tables)")
    args = parser.parse_args(argv)
    settings = figure_settings()
    pd.set_option("display.width", 200)
    if args.analysis == "tables":
        table = score_tables(pd.read_csv(args.scores or settings["scores"]))
        for path in write_tables(table, args.out or settings["tables"]):
            print(f"wrote {path}")
    elif args.analysis == "squares":
        theory = square_theory()
        print(theory.to_string(float_format=lambda v: f"{v:.6g}"))
        print(f"largest relative error {theory['relative_error'].max():.4%}")
        result = area_classifier()
        print(f"area classifier (side bins {result['bin_edges']}, chance {result['chance']:.3f}): "
              + ", ".join(f"T={t}: {a:.3f}" for t, a in result["accuracy_by_steps"].items()))
    else:
        table, _ = erf_radii(probe_images(), (32, 32))
        print(table.to_string(float_format=lambda v: f"{v:.2f}"))


if __name__ == "__main__":
    main()
