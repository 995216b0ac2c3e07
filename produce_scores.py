"""Turn finished runs into one score table (CSV, one row per run).

    python produce_scores.py                               # every run under ./runs -> runs/scores.csv
    python produce_scores.py --runs-root /scratch/runs --out /scratch/runs/scores.csv
    python produce_scores.py runs/tetrominoes/nwm-linear-T100-h2-seed0 --no-eval
    python produce_scores.py --runs-root results/runs --out results/scores.csv   # the shipped table

Re-evaluating takes a while on a CPU (times in docs/speed.md): --no-eval is instant.

Each finished run's best checkpoint is evaluated again on the test split, in float32
(--no-eval reads the test metrics the run stored instead). A run is only re-evaluated on
the data it was trained on: when its recorded data fingerprint differs from the dataset
now under the data root (or it has none), its stored metrics are used, and the `data`
column says which data each row comes from, so that no table mixes them. Rows are keyed
by run name: scoring a run again replaces its row, and rows of runs not scored in this
call are kept, so the table can be built up dataset by dataset. Unfinished and broken
runs are listed and skipped.
"""
import argparse
import sys
from pathlib import Path

import pandas as pd
from tqdm import tqdm

import runs
import settings
from cli import (HelpFormatter, add_data_root, add_device, add_progress, add_runs_root, add_threads, int_at_least,
                 shows_bars)
from dataset_config import DatasetError, fingerprint, load_dataset, read_metadata
from engine import evaluate
from metrics import METRIC_NAMES

CONFIG_COLUMNS = ("dataset", "model", "readout", "T", "depth", "width", "hidden_channels", "seed",
                  "num_params", "epochs", "train_size")


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("run_dirs", nargs="*", help="run directories to score (default: every run under --runs-root)")
    add_runs_root(p)
    add_data_root(p)
    p.add_argument("--out", default=None,
                   help="CSV file to write, rows merged into it (default: $WAVES_SCORES, else <runs root>/scores.csv)")
    add_progress(p, log="one line per run")
    p.add_argument("--no-eval", dest="evaluate", action="store_false",
                   help="use each run's stored test_metrics.json instead of evaluating its checkpoint again")
    p.add_argument("--fresh", action="store_true", help="ignore rows already in --out instead of merging")
    add_device(p)
    add_threads(p)
    p.add_argument("--batch-size", type=int_at_least(1), default=64, help="evaluation batch size")
    return p


def config_columns(config):
    """The table's config columns; settings that do not apply to a model are left empty."""
    row = {k: config.get(k) for k in CONFIG_COLUMNS}
    if config["model"] != "cnn":
        row["depth"] = None
    if config["model"] != "unet":
        row["width"] = None
    if config["model"] == "unet":
        row["T"] = row["hidden_channels"] = None
    return row


def data_label(config):
    """Which data a run was trained on, for the table's `data` column."""
    data = config.get("data")
    if not data:
        return "unrecorded"
    if data.get("label"):
        return data["label"]
    if data["paper_identical"]:
        return "paper"
    origin = "our recipe" if data["paper_identical"] is None else "paper's recipe"
    return f"{origin}, seed {data['seed']}, sha256 {data['sha256'][:12]}"


class TestSplits:
    """Test splits and data fingerprints, loaded once per dataset, on the evaluation device."""

    def __init__(self, data_root, device):
        self.data_root, self.device, self.cache = data_root, device, {}

    def __call__(self, dataset):
        """(images, masks, fingerprint) of the dataset's test split."""
        if dataset not in self.cache:
            images, masks = load_dataset(dataset, "test", self.data_root)
            data = fingerprint(read_metadata(dataset, self.data_root))
            self.cache[dataset] = images.to(self.device), masks.to(self.device), data
        return self.cache[dataset]


def score_run(run_dir, test_splits, device, do_evaluate, batch_size):
    """One table row for a finished run (raises on a broken one)."""
    config = runs.load_json(run_dir / runs.CONFIG)
    stored = runs.load_json(run_dir / runs.TEST_METRICS)
    metrics, evaluated = stored, "stored"
    if do_evaluate:
        trained_on = (config.get("data") or {}).get("sha256")
        images, masks, data = test_splits(config["dataset"])
        if trained_on == data["sha256"]:
            model, _ = runs.load_model(run_dir, device)
            metrics = evaluate(model, images, masks, config["num_classes"], batch_size)
            evaluated = "re-evaluated"
        else:
            evaluated = "stored (trained on other data than the data root holds)"
    row = {"run": config["run_name"], "epochs_run": stored.get("epochs_run"), "best_epoch": stored.get("best_epoch"),
           "data": data_label(config), "evaluated": evaluated}
    row.update(config_columns(config))
    row.update({name: metrics[name] for name in METRIC_NAMES})
    row.update({f"iou_class{i}": v for i, v in enumerate(metrics["iou_per_class"])})
    return row


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        device = settings.pick_device(args.device)
    except ValueError as e:
        parser.error(f"--device: {e}")
    settings.set_threads(args.threads)
    if args.run_dirs:
        run_dirs = [Path(d) for d in args.run_dirs]
    else:
        root = settings.runs_root(args.runs_root)
        if not root.is_dir():
            sys.exit(f"error: no runs root at {root}; train with train.py first, or pass --runs-root")
        run_dirs = runs.find_runs(root)

    rows, skipped = [], []
    test_splits = TestSplits(args.data_root, device)
    terminal = shows_bars(args.progress)  # in a log, a line per run instead
    for i, run_dir in enumerate(tqdm(run_dirs, desc="scoring runs", disable=not terminal, dynamic_ncols=True)):
        if args.progress and not terminal:
            print(f"[{i + 1}/{len(run_dirs)}] {run_dir}", flush=True)
        if not (run_dir / runs.CONFIG).is_file():
            skipped.append((run_dir, "not a run directory (no config.json)"))
        elif not runs.is_finished(run_dir):
            skipped.append((run_dir, "unfinished (no test_metrics.json): resume it with its train.py command"))
        else:
            try:
                rows.append(score_run(run_dir, test_splits, device, args.evaluate, args.batch_size))
            except runs.DamagedFile as e:
                skipped.append((run_dir, f"{e}: restore it, or train the run again with --restart"))
            except (DatasetError, OSError, KeyError, ValueError, RuntimeError) as e:
                skipped.append((run_dir, f"broken: {type(e).__name__}: {e}"))

    out = settings.scores_path(args.out, args.runs_root)
    table = pd.DataFrame(rows)
    if out.is_file() and not args.fresh:
        old = pd.read_csv(out)
        table = pd.concat([old[~old["run"].isin(table.get("run", []))], table], ignore_index=True)
    if len(table):
        table = table.sort_values("run").reset_index(drop=True)
        try:
            runs.make_dir(out.parent)
            runs.save_text(table.to_csv(index=False), out)
        except runs.WriteError as e:
            sys.exit(f"error: {e}; choose another --out")
    print(f"scored {len(rows)} run(s){' (re-evaluated on the test split)' if args.evaluate else ''}; "
          f"{out} holds {len(table)} row(s)")
    for run_dir, why in skipped:
        print(f"skipped {run_dir}: {why}")
    if rows:
        summary = (pd.DataFrame(rows).assign(variant=[runs.variant(r) for r in rows])
                   .groupby(["dataset", "data", "model", "variant"])["iou_foreground"].agg(["count", "mean", "std"]))
        print(summary.to_string(float_format=lambda v: f"{v:.4f}"))
    return table, skipped


if __name__ == "__main__":
    main()
