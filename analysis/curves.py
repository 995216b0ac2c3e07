"""Per-epoch curves of chosen runs, and where each lies against the spread of others (e.g. a
variant against seeds of its baseline: docs/speed.md's bfloat16-coupling A/B), and how far each lies from
its twin among them, the run at its seed, beside how far the seeds lie from each other.

    curves = load_curves(["runs/a", "runs/b"])               # [(label, metrics.csv as a DataFrame)]
    table = against_spread(curves, load_curves(seeds), "val_loss")
    both = load_curves(variants + seeds)                     # one call: labels apart where folder names repeat
    table = against_twin(both[:len(variants)], twins(variants, seeds), both[len(variants):], "val_loss")
"""
from pathlib import Path

import pandas as pd

import runs


def labels(run_dirs):
    """A short label per run: its folder's name, with as many of the folders above it (as given) as tell it
    apart from every other run's. ValueError for a run given twice, however spelled: no label can."""
    first_named = {}  # resolved path -> the run directory as first given
    for run_dir in run_dirs:
        where = Path(run_dir).resolve()
        if where in first_named:
            raise ValueError(f"{first_named[where]} and {run_dir} are the same run; name each run once")
        first_named[where] = run_dir
    parts = [Path(d).parts for d in run_dirs]

    def tail(i, length):
        return Path(*parts[i][-length:]).as_posix()

    def label(i):
        length = 1
        while any(tail(i, length) == tail(j, length) for j in range(len(parts)) if j != i):
            length += 1  # ends when the whole paths, which differ, are compared
        return tail(i, length)
    return [label(i) for i in range(len(parts))]


def load_curves(run_dirs):
    """[(label, the run's metrics.csv as a DataFrame)]; ValueError for a folder with no finished epoch."""
    curves = []
    for label, run_dir in zip(labels(run_dirs), run_dirs):
        path = Path(run_dir) / runs.METRICS
        if not path.is_file():
            raise ValueError(f"{run_dir} has no {runs.METRICS} (not a run, or no epoch finished)")
        curves.append((label, pd.read_csv(path)))  # pandas' read errors are ValueErrors too
    return curves


def check_metrics(curves, metrics):
    """ValueError naming the metrics there are when a run lacks one of `metrics` (or its epochs) or one
    of them holds no numbers (epoch, device_name), or when it lists an epoch twice (as a hand-edited
    metrics.csv may: its rows could not be lined up with the others')."""
    for label, history in curves:
        numeric = [c for c in history.columns if c.startswith(("train_", "val_")) and c != "val_seconds"]
        missing = [m for m in ("epoch", *metrics) if m not in history.columns]
        if missing:
            raise ValueError(f"{label} has no column {', '.join(missing)}; its metrics: {', '.join(numeric)}")
        not_numbers = [m for m in metrics if m == "epoch" or not pd.api.types.is_numeric_dtype(history[m])]
        if not_numbers:
            raise ValueError(f"{label}'s {', '.join(not_numbers)} is no metric to compare per epoch; its metrics: "
                             f"{', '.join(numeric)}")
        repeated = history["epoch"][history["epoch"].duplicated()]
        if len(repeated):
            raise ValueError(f"{label}'s {runs.METRICS} lists epoch {repeated.iloc[0]} twice; keep one row per epoch")


def per_epoch(curves, metric, join="outer"):
    """`metric` of each curve as a column, one row per epoch (join "inner": only the epochs every curve has)."""
    return pd.concat([history.set_index("epoch")[metric].rename(label) for label, history in curves], axis=1,
                     join=join)


def against_spread(curves, spread, metric):
    """Per epoch that every run of `spread` has: their min and max of `metric`, and each curve's value
    and whether it lies within [min, max] (None where that curve has no such epoch)."""
    merged = per_epoch(spread, metric, join="inner")
    table = pd.DataFrame({"spread_min": merged.min(axis=1), "spread_max": merged.max(axis=1)})
    for label, history in curves:
        values = history.set_index("epoch")[metric].reindex(table.index)
        table[label] = values
        table[f"{label} within"] = [None if pd.isna(v) else bool(lo <= v <= hi)
                                    for v, lo, hi in zip(values, table["spread_min"], table["spread_max"])]
    return table


def twins(run_dirs, spread_dirs):
    """For each run, the position in `spread_dirs` of the first run trained at its seed (config.json's), or None."""
    def seed(run_dir):
        return runs.load_json(Path(run_dir) / runs.CONFIG).get("seed")
    seeds = [seed(d) for d in spread_dirs]
    return [seeds.index(s) if s is not None and s in seeds else None for s in map(seed, run_dirs)]


def against_twin(curves, twin_of, spread, metric):
    """Per epoch that every run has: each curve's difference from its twin (`twin_of`, from twins: the same
    initial weights and batch order, so the difference is what the curve's variant changes; no column without
    one) beside the range of `spread` (max - min: what the seed alone changes). Labels must differ across
    curves and spread (load_curves of all of them at once)."""
    merged = per_epoch(spread + curves, metric, join="inner")
    spread_labels = [label for label, _ in spread]
    table = pd.DataFrame({"spread_range": merged[spread_labels].max(axis=1) - merged[spread_labels].min(axis=1)})
    for (label, _), twin in zip(curves, twin_of):
        if twin is not None:
            table[f"{label} - {spread_labels[twin]}"] = merged[label] - merged[spread_labels[twin]]
    return table
