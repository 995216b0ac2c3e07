"""Turn finished runs into one score table (CSV, one row per run).

    python produce_scores.py                               # every run under ./runs -> runs/scores.csv
    python produce_scores.py --runs-root /scratch/runs --out /scratch/runs/scores.csv
    python produce_scores.py runs/tetrominoes/nwm-linear-T100-h2-seed0 --no-eval
    python produce_scores.py --runs-root results/runs --out results/scores.csv   # the shipped table

Re-evaluating takes a while on a CPU (times in docs/speed.md): --no-eval is instant.

Each finished run's best checkpoint is evaluated again on the test split, in float32
(--no-eval reads the test metrics the run stored instead). A run is only re-evaluated on
the data it was trained on: when its recorded data fingerprint differs from the dataset
now under the data root (or it has none, or the data root lacks the dataset), its stored
metrics are used, and the `data`
column says which data each row comes from, so that no table mixes them. Unfinished and
damaged runs are listed and skipped.

Rows are keyed by the run's path under the runs root (a copied run is a row of its own),
so a table belongs to one runs root: its `runs_root` column holds that root relative to the
table's folder (a table moved together with its runs stays theirs), and a call with another
runs root is refused before any work. A table written before that column is taken on: its
rows get this call's runs root when it is next written. Scoring a run again replaces its
row, the row of a run training again (unfinished now) is dropped, and rows of runs not
scored in this call are kept (--fresh drops them), so the table can be built up dataset by
dataset. The table is updated after each run, under a lock on a file beside it
(.<name>.lock), by reading it, merging and renaming a complete new file over it: several
instances may write one table at once, and Ctrl-C or a kill keeps every run scored before it.

Each dataset and data version with runs also gets one row with `model` "background only":
predicting background everywhere, scored with the same metrics on the same test split
(the floor a trained model must beat; its accuracy is the share of background pixels).
It is computed on the test split under the data root when that holds the runs' data,
else taken from a run's own test (train.py computes it there on the same split). Its
`loss` and `loss_foreground` are empty: a prediction without probabilities has no
cross-entropy (taken as certain, it would be 0 on every background pixel and infinite on
every foreground one). Tables and means over runs leave these rows out (analysis/tables.py).
"""
import contextlib
import fcntl
import io
import os
import signal
import sys
from pathlib import Path

import pandas as pd
from tqdm import tqdm

import runs
import settings
from cli import (ArgumentParser, HelpFormatter, add_data_root, add_device, add_progress, add_runs_root, add_threads,
                 int_at_least, run_main, shows_bars)
from dataset_config import CorruptDatasetError, DatasetError, check_arrays, fingerprint, load_dataset, read_metadata
from engine import evaluate, set_backends
from metrics import METRIC_NAMES, background_only_metrics
from signals import EXIT_STATUS, Interrupted, StopSignals

# a run's settings in the table: its model's (runs.model_columns) between the dataset and model and the rest
CONFIG_COLUMNS = ("dataset", "model", *runs.MODEL_COLUMNS, "seed", "num_params", "epochs", "train_size")
# whole numbers that some rows leave empty: written as 16, not 16.0
INTEGER_COLUMNS = ("epochs_run", "best_epoch", *(c for c in CONFIG_COLUMNS if c not in ("dataset", "model", "readout")))
# the `model` of the rows that score predicting background everywhere
BASELINE = "background only"
# what every score table holds: a CSV without them is someone else's file
TABLE_COLUMNS = ("run", "dataset", "model")
NOT_A_TABLE = "produce_scores.py writes those and leaves other files alone"
# how the table was named (ScoresFile's `flag`) when not by --out
SCORES_ENV_FLAG, DEFAULT_FLAG = f"${settings.SCORES_ENV}", "the default score table"


def build_parser():
    p = ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("run_dirs", nargs="*",
                   help="run directories, or folders of runs, to score (default: every run under --runs-root, "
                        "which they must lie under)")
    add_runs_root(p)
    add_data_root(p)
    p.add_argument("--out", default=None,
                   help="CSV file to write, rows merged into it; it holds the runs of one runs root (default: "
                        "$WAVES_SCORES, else <runs root>/scores.csv)")
    add_progress(p, log="one line per run")
    p.add_argument("--no-eval", dest="evaluate", action="store_false",
                   help="use each run's stored test_metrics.json instead of evaluating its checkpoint again")
    p.add_argument("--fresh", action="store_true",
                   help="once every run is scored, drop the rows of runs not scored in this call")
    add_device(p)
    add_threads(p)
    p.add_argument("--batch-size", type=int_at_least(1), default=64, help="evaluation batch size")
    return p

# -----------------------------------------------------------------------------
# the score file


class ScoresError(Exception):
    """The score table cannot be read as one, cannot be written, or holds the runs of another runs
    root; the message says what to do."""


def row_keys(table):
    """What identifies each row: a run's path under the table's runs root, or the dataset and data
    of a background-only row."""
    if not len(table):
        return []
    return [(None, dataset, data) if model == BASELINE else (run,)
            for run, dataset, data, model in zip(table["run"], table["dataset"], table["data"], table["model"])]


def tidy(table):
    """Background-only rows of data that no run is left on dropped; sorted by dataset, its
    background-only rows first, then by run; whole-number columns without a decimal point."""
    baseline = table["model"] == BASELINE
    with_runs = set(zip(table.loc[~baseline, "dataset"], table.loc[~baseline, "data"]))
    table = table[rows_where(table, [not b or key in with_runs
                                     for b, key in zip(baseline, zip(table["dataset"], table["data"]))])]
    table = (table.assign(_trained=table["model"] != BASELINE)
             .sort_values(["dataset", "_trained", "run", "data"], na_position="first", kind="stable")
             .drop(columns="_trained").reset_index(drop=True))
    for column in INTEGER_COLUMNS:
        if column in table.columns:
            table[column] = whole_numbers(table[column])
    return table


def rows_where(table, mask):
    """`mask` as a row selector of `table` (a plain empty list would select no columns instead)."""
    return pd.Series(mask, index=table.index, dtype=bool)


def whole_numbers(column):
    """`column` as nullable integers when every value in it is a whole number, else as it is."""
    numbers = pd.to_numeric(column, errors="coerce")
    if numbers.notna().sum() != column.notna().sum() or (numbers.dropna() % 1 != 0).any():
        return column
    return numbers.astype("Int64")


class ScoresFile:
    """The score table at `path`, named by `flag` (--out, SCORES_ENV_FLAG, DEFAULT_FLAG, or a
    reader's own flag), of the runs under `runs_root` (what check and update need; a reader
    leaves it out). It is changed only under an exclusive lock on a file beside it: each update
    reads the rows there now, replaces those scored again and renames a complete new file over
    it, so concurrent writers never lose each other's rows and a killed one leaves the table whole."""

    def __init__(self, path, flag="--out", runs_root=None):
        self.path, self.flag = Path(path), flag
        self.lock_path = self.path.with_name(f".{self.path.name}.lock")
        # relative to the table's folder: a table moved with its runs stays theirs, and no absolute path is shipped
        self.runs_root = None if runs_root is None else \
            Path(os.path.relpath(Path(runs_root).resolve(), self.path.parent.resolve())).as_posix()
        self.written = False  # whether this instance has written the table
        if flag == SCORES_ENV_FLAG:
            self.name_another = f"point {flag} at another file, or name one with --out"
        else:
            self.name_another = f"name another file with {'--out' if flag == DEFAULT_FLAG else flag}"

    def refuse_another_runs_root(self, table):
        """ScoresError when the trained rows of `table` carry another runs root than this call's."""
        if self.runs_root is None:
            raise ValueError("a ScoresFile that checks or writes its table needs its runs_root")
        if "runs_root" not in table.columns:  # written before the column: taken on
            return
        theirs = sorted({r for r in table.loc[table["model"] != BASELINE, "runs_root"].dropna() if r}
                        - {self.runs_root})
        if not theirs:
            return
        their_root = (self.path.parent.resolve() / theirs[0]).resolve()
        try:
            their_root = their_root.relative_to(Path.cwd().resolve())
        except ValueError:  # not under the current folder: its absolute path
            pass
        raise ScoresError(f"{self.flag} {self.path} holds the runs of the runs root {theirs[0]} (relative to its "
                          f"folder), not {self.runs_root}: its rows are keyed by a run's path under one root; pass "
                          f"--runs-root {their_root}, or {self.name_another}")

    @contextlib.contextmanager
    def locked(self):
        try:
            lock = open(self.lock_path, "a")
        except OSError as e:
            raise ScoresError(f"cannot write beside {self.flag} {self.path} ({self.lock_path}: {e.strerror}); "
                              f"{self.name_another}") from None
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed, or its process dies
            yield

    def read(self):
        """The rows there now (none without a file); ScoresError when it is not a score table."""
        if self.path.is_dir():
            raise ScoresError(f"{self.flag} {self.path} is a folder; {self.name_another}, a CSV file such as "
                              f"{self.path / 'scores.csv'}")
        try:
            text = self.path.read_bytes().decode()
        except FileNotFoundError:
            return pd.DataFrame()
        except UnicodeDecodeError:
            raise ScoresError(f"{self.flag} {self.path} is not a score table (not text); {NOT_A_TABLE}: "
                              f"{self.name_another}") from None
        except OSError as e:
            raise ScoresError(f"cannot read {self.flag} {self.path}: {e.strerror}; {self.name_another}") from None
        if not text.strip():
            return pd.DataFrame()
        try:
            # names as text: a run named 7 must keep the key "7"
            table = pd.read_csv(io.StringIO(text), dtype={c: str for c in (*TABLE_COLUMNS, "runs_root", "data")})
        except pd.errors.ParserError as e:
            raise ScoresError(f"{self.flag} {self.path} is not a score table ({str(e).strip()}); "
                              f"{NOT_A_TABLE}: {self.name_another}") from None
        missing = [c for c in TABLE_COLUMNS if c not in table.columns]
        if missing:
            raise ScoresError(f"{self.flag} {self.path} is not a score table (no {', '.join(missing)} column); "
                              f"{NOT_A_TABLE}: {self.name_another}")
        if "data" not in table.columns:  # written before runs recorded their data
            table["data"] = None
        return table

    def check(self):
        """Before any work: ScoresError unless the table can be read and written and holds no other
        runs root's runs. Returns its rows."""
        try:
            runs.make_dir(self.path.parent)
        except runs.WriteError as e:
            raise ScoresError(f"{e}; {self.name_another}") from None
        with self.locked():
            table = self.read()
        self.refuse_another_runs_root(table)
        return table

    def update(self, rows, drop=(), keep_only=None):
        """Merges `rows` into the table (a row scored again replaces its old one), drops the rows
        keyed in `drop` and, with `keep_only` (row keys), every other row, and writes it whole
        unless nothing changes. Returns the table and the keys of the rows dropped."""
        with self.locked():
            old, new = self.read(), pd.DataFrame(rows)
            self.refuse_another_runs_root(old)  # another root's writer may have written since check()
            keys = row_keys(old)
            dropped = [key for key in keys if key in drop or (keep_only is not None and key not in keep_only)]
            if not rows and not dropped:  # nothing to change: the file is left as it is
                return old, []
            replaced = set(row_keys(new)) | set(dropped)
            old = old[rows_where(old, [key not in replaced for key in keys])]
            table = tidy(pd.concat([t for t in (old, new) if len(t)] or [old], ignore_index=True))
            # every trained row is of this runs root now, those of a table written before the column too
            runs_root = pd.Series(self.runs_root, index=table.index).where(table["model"] != BASELINE)
            table = table.drop(columns="runs_root", errors="ignore")
            table.insert(table.columns.get_loc("run") + 1, "runs_root", runs_root)
            try:
                runs.save_text(table.to_csv(index=False), self.path)
            except runs.WriteError as e:
                raise ScoresError(f"{e}; {self.name_another}") from None
            self.written = True
        return table, dropped

# -----------------------------------------------------------------------------
# runs and their rows


def chosen_runs(paths, root):
    """(run directory, key) of each run to score, the key being its path under the runs root:
    the runs under each of `paths` (run directories or folders of runs), else under the root.
    ScoresError for a path that holds no run or lies outside the runs root."""
    if not paths:
        if not root.is_dir():
            raise ScoresError(f"no runs root at {root}; train with train.py first, or pass --runs-root")
        found = runs.find_runs(root)
        if not found:
            raise ScoresError(f"no runs under {root} (no config.json in it); train with train.py first, or pass "
                              f"--runs-root")
    else:
        found = []
        for path in map(Path, paths):
            if not path.exists():
                raise ScoresError(f"no run directory at {path}; give a run's folder (or a folder of runs)")
            under = runs.find_runs(path) if path.is_dir() else []
            if not under:
                raise ScoresError(f"{path} is not a run directory and holds none (no config.json); give a run's "
                                  f"folder (or a folder of runs)")
            found += under
    chosen = {}
    for run_dir in found:
        try:
            key = run_dir.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            raise ScoresError(f"{run_dir} is not under the runs root {root}, which the table's rows are keyed by; "
                              f"pass --runs-root") from None
        chosen.setdefault(key, run_dir)  # a run named twice is scored once
    return [(run_dir, key) for key, run_dir in chosen.items()]


def config_columns(config):
    """The table's config columns; settings that do not apply to a model are left empty (runs.model_columns)."""
    return {k: config.get(k) for k in CONFIG_COLUMNS} | runs.model_columns(config)


def metric_columns(metrics):
    """The metrics of METRIC_NAMES (empty where `metrics` lacks one) and the per-class IoUs."""
    row = {name: metrics.get(name) for name in METRIC_NAMES}
    row.update({f"iou_class{i}": v for i, v in enumerate(metrics["iou_per_class"])})
    return row


class TestSplits:
    """Test splits and data fingerprints, loaded once per dataset, on the evaluation device; a
    dataset that cannot be loaded raises the same error for every run of it, found once."""

    def __init__(self, data_root, device):
        self.data_root, self.device, self.cache = data_root, device, {}

    def __call__(self, dataset):
        """(images, masks, fingerprint) of the dataset's test split."""
        if dataset not in self.cache:
            try:
                check_arrays(dataset, self.data_root)  # the arrays are what dataset.json, the fingerprint, says
                images, masks = load_dataset(dataset, "test", self.data_root)
                data = fingerprint(read_metadata(dataset, self.data_root))
                self.cache[dataset] = images.to(self.device), masks.to(self.device), data
            except Exception as e:  # hashing every array again for each run would find the same
                self.cache[dataset] = e
        if isinstance(self.cache[dataset], Exception):
            raise self.cache[dataset]
        return self.cache[dataset]


def score_run(run_dir, key, test_splits, device, do_evaluate, batch_size, stop):
    """(row, config, stored test metrics) of a finished run (raises on a broken one)."""
    config = runs.load_json(run_dir / runs.CONFIG)
    stored = runs.load_json(run_dir / runs.TEST_METRICS)
    metrics, evaluated = stored, "stored"
    if do_evaluate:
        trained_on = (config.get("data") or {}).get("sha256")
        try:
            images, masks, data = test_splits(config["dataset"])
        except CorruptDatasetError:  # arrays changed since written: not what any fingerprint says
            evaluated = "stored (its dataset under the data root changed since it was written)"
        except DatasetError:  # not under this data root: the run's own test still stands
            evaluated = "stored (its dataset is not under the data root)"
        else:
            if trained_on == data["sha256"]:
                model, _ = runs.load_model(run_dir, device)
                metrics = evaluate(model, images, masks, config["num_classes"], batch_size, stop=stop)
                evaluated = "re-evaluated"
            else:
                evaluated = "stored (trained on other data than the data root holds)"
    row = {"run": key, "epochs_run": stored.get("epochs_run"), "best_epoch": stored.get("best_epoch"),
           "data": runs.data_label(config), "evaluated": evaluated}
    row.update(config_columns(config))
    row.update(metric_columns(metrics))
    return row, config, stored


def baseline_row(config, stored, key, test_splits):
    """The background-only row of the data the run `key` (its config and stored test metrics) was
    trained on, or None: computed on the test split under the data root when that holds the
    same data, else the one the run's own test stored."""
    try:
        _, masks, data = test_splits(config["dataset"])
        same_data = data["sha256"] == (config.get("data") or {}).get("sha256")
    except (DatasetError, runs.DamagedFile, OSError):  # not there, or not readable: the run's own test may say
        same_data = False
    if same_data:
        metrics, evaluated = background_only_metrics(masks.cpu(), config["num_classes"]), "computed on the test split"
    elif stored.get("background_only"):
        metrics, evaluated = stored["background_only"], f"stored by the test of {key}"
    else:
        return None
    row = {"run": None, "data": runs.data_label(config), "evaluated": evaluated, "dataset": config["dataset"],
           "model": BASELINE}
    row.update(metric_columns(metrics))
    return row

# -----------------------------------------------------------------------------
# the command


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        device = settings.pick_device(args.device)
    except ValueError as e:
        parser.error(f"--device: {e}")
    set_backends(device)  # float32 in float32: no TF32 on a GPU, as train.py's float32 runs
    settings.set_threads(args.threads)
    root = settings.runs_root(args.runs_root)
    if args.out is not None:
        flag = "--out"
    else:
        flag = SCORES_ENV_FLAG if os.environ.get(settings.SCORES_ENV) else DEFAULT_FLAG
    scores = ScoresFile(settings.scores_path(args.out, args.runs_root), flag, root)
    try:
        chosen = chosen_runs(args.run_dirs, root)
        table = scores.check()
    except ScoresError as e:
        sys.exit(f"error: {e}")

    rows, skipped, dropped, baselines, training_again = [], [], [], {}, set()
    test_splits = TestSplits(args.data_root, device)
    terminal = shows_bars(args.progress)  # in a log, a line per run instead
    try:
        with StopSignals() as stop:
            for i, (run_dir, key) in enumerate(tqdm(chosen, desc="scoring runs", disable=not terminal,
                                                    dynamic_ncols=True)):
                stop.check()
                if args.progress and not terminal:
                    print(f"[{i + 1}/{len(chosen)}] {run_dir}", flush=True)
                if not (run_dir / runs.CONFIG).is_file():
                    skipped.append((run_dir, "not a run directory (no config.json)"))
                    continue
                if not runs.is_finished(run_dir):
                    skipped.append((run_dir, "unfinished (no test_metrics.json): resume it with its train.py command"))
                    training_again.add((key,))
                    continue
                try:
                    row, config, stored = score_run(run_dir, key, test_splits, device, args.evaluate,
                                                    args.batch_size, stop)
                    version = (row["dataset"], row["data"])
                    baseline = None if baselines.get(version) else baseline_row(config, stored, key, test_splits)
                except runs.DamagedFile as e:
                    skipped.append((run_dir, f"{e}: restore it, or train the run again with --restart"))
                    continue
                except Interrupted:
                    raise
                except Exception as e:  # whatever breaks one run must not stop the others' table
                    # not a damaged file (out of memory, a full disk...): training again would not help
                    skipped.append((run_dir, f"broken ({type(e).__name__}: {e}); check its files, then run the "
                                             f"same command again"))
                    continue
                if not baselines.get(version):  # a later run of the version may have stored one where this had none
                    baselines[version] = baseline
                table, _ = scores.update([row, *filter(None, [baseline])])  # after each run: Ctrl-C keeps the rest
                rows.append(row)
        if training_again:  # their rows are of trainings they went on from: dropped in one update
            table, gone = scores.update([], drop=training_again)
            dropped = [run for (run,) in gone]
        if args.fresh:  # with no run scored too: then no row is kept
            table, _ = scores.update([], keep_only={(row["run"],) for row in rows}
                                     | {(None, *version) for version, row in baselines.items() if row})
    except (Interrupted, KeyboardInterrupt) as e:
        signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
        print(f"\ninterrupted ({signal.Signals(signum).name}) after scoring {len(rows)} of {len(chosen)} run(s), "
              f"kept in {scores.path}; run the same command to score them all", file=sys.stderr)
        sys.exit(EXIT_STATUS[signum])
    except ScoresError as e:
        sys.exit(f"error: {e}")

    written = f"{scores.path} holds {len(table)} row(s)" if scores.written else f"{scores.path} is unchanged"
    re_evaluated = sum(row["evaluated"] == "re-evaluated" for row in rows)
    how = (f": {re_evaluated} re-evaluated on the test split, {len(rows) - re_evaluated} with their stored test "
           f"metrics") if rows else ""
    print(f"scored {len(rows)} run(s){how}; {written}")
    for run_dir, why in skipped:
        print(f"skipped {run_dir}: {why}")
    for key in dropped:
        print(f"dropped the row of {key}: it is training again; score it when it finishes")
    for (dataset, data), row in baselines.items():
        if row is None:
            print(f"no background-only row for {dataset} ({data}): the data root holds other data and no run's "
                  f"test stored one")
    if rows:
        summary = (pd.DataFrame(rows).assign(variant=[runs.variant(r) for r in rows])
                   .groupby(["dataset", "data", "model", "variant"])["iou_foreground"].agg(["count", "mean", "std"]))
        print(summary.to_string(float_format=lambda v: f"{v:.4f}"))
    return table, skipped


if __name__ == "__main__":
    run_main(main)
