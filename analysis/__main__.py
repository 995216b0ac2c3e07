"""The analyses from the command line: python -m analysis SUBCOMMAND (--help for each).

    python -m analysis tables                   # score table -> mean ± std, min / median / max; beside the paper's
    python -m analysis tables --scores results/scores.csv --out results/tables   # the shipped tables
    python -m analysis squares                  # square-area theory: errors and area classifier
    python -m analysis erf                      # receptive-field radii of untrained NWMs and CNNs
    python -m analysis erf RUN [RUN ...]        # and of trained runs, on their own datasets' images
    python -m analysis waves RUN [RUN ...]      # waves of trained runs: numbers, figures, sounds
    python -m analysis classes RUN [RUN ...]    # per-class IoU and the confusion matrix: which classes it confuses
    python -m analysis curves RUN [RUN ...] --spread RUN [RUN ...]   # per-epoch curves, against others' spread
"""
import os
import shlex
import sys

import pandas as pd

import runs
import settings
from analysis.classes import write_reports
from analysis.curves import against_spread, against_twin, check_metrics, load_curves, per_epoch, twins
from analysis.receptive_fields import erf_radii, probe_images, trained_radii
from analysis.squares import area_classifier, square_theory
from analysis.tables import TABLES_COMMAND_FILES, paper_comparison, score_tables, write_comparison, write_tables
from analysis.wave_report import report
from cli import (ArgumentParser, HelpFormatter, add_data_root, add_progress, add_threads, int_at_least, run_main,
                 shows_bars)
from dataset_config import DatasetError
from plotting import compared_curves, save_figure
from produce_scores import ScoresError, ScoresFile


def scores_origin(args):
    """Where the tables command's score table path came from, and the command that writes a table there."""
    if args.scores is not None:
        return "--scores", f"python produce_scores.py --out {shlex.quote(args.scores)}"
    if os.environ.get(settings.SCORES_ENV):  # produce_scores.py writes there by default too
        return f"from ${settings.SCORES_ENV}", "python produce_scores.py (or pass --scores)"
    return "the default, <runs root>/scores.csv", "python produce_scores.py (or pass --scores)"


def tables(args):
    path, out = settings.scores_path(args.scores), settings.tables_dir(args.out)
    origin, make = scores_origin(args)
    if not path.is_file() and not path.is_dir():
        sys.exit(f"error: no score table at {path} ({origin}); make it with: {make}")
    for name in TABLES_COMMAND_FILES:  # samefile: the same file however it is spelled or linked
        if (out / name).exists() and (out / name).samefile(path):
            sys.exit(f"error: the tables folder {out} holds the score table read ({path}) as {name}, which the "
                     f"tables would overwrite; choose another --out")
    try:
        scores = ScoresFile(path, "--scores").read()
    except ScoresError as e:
        sys.exit(f"error: {e}")
    if not len(scores):
        sys.exit(f"error: {path} holds no rows; score runs into it with: {make}")
    try:
        written = write_tables(score_tables(scores), out) + write_comparison(paper_comparison(scores), out)
    except runs.WriteError as e:
        sys.exit(f"error: {e}; choose another --out")
    for path in written:
        print(f"wrote {path}")


def squares(args):
    theory = square_theory()
    print(theory.to_string(float_format=lambda v: f"{v:.6g}"))
    print(f"largest relative error {theory['relative_error'].max():.4%}")
    result = area_classifier()
    print(f"area classifier (side bins {result['bin_edges']}, chance {result['chance']:.3f}): "
          + ", ".join(f"T={t}: {a:.3f}" for t, a in result["accuracy_by_steps"].items()))


def erf(args):
    if args.runs:
        settings.set_threads(args.threads)
        try:
            table = trained_radii(args.runs, args.n, args.split, args.data_root)
        except (OSError, ValueError, DatasetError) as e:
            sys.exit(f"error: {e}")
    else:
        table, _ = erf_radii(probe_images(), (32, 32))
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))


def waves(args):
    settings.set_threads(args.threads)
    settings.tune_cpu_allocator()  # its large numpy fields, allocated per image, reuse freed memory (3x faster)
    figures = settings.figures_dir(args.figures)
    sounds = args.sounds if args.sounds is not None else figures.parent / "sounds"
    try:
        outputs = report(args.runs, figures, settings.tables_dir(args.tables), sounds, args.n, args.split,
                         args.data_root, shows_bars(args.progress))
    except (OSError, ValueError, DatasetError) as e:
        sys.exit(f"error: {e}")
    print(outputs["summary"].to_string(float_format=lambda v: f"{v:.4g}"))
    print(outputs["classes"].to_string(float_format=lambda v: f"{v:.4g}"))
    for path in [*outputs["figures"], *(p for paths in outputs["sounds"].values() for p in paths.values())]:
        print(f"wrote {path}")


def classes(args):
    settings.set_threads(args.threads)
    try:
        reports, paths = write_reports(args.runs, settings.figures_dir(args.figures), settings.tables_dir(args.tables),
                                       args.split, args.data_root, args.n, shows_bars(args.progress))
    except (OSError, ValueError, DatasetError, runs.WriteError) as e:
        sys.exit(f"error: {e}")
    for report in reports:
        print(f"{report['run']}, {report['split']} split, {report['images']} images, float32:")
        print(report["classes"].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        print(f"the {args.pairs} largest confusions (share: of the true class's pixels):")
        print(report["pairs"].head(args.pairs).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    for path in paths:
        print(f"wrote {path}")


def curves(args):
    try:
        everything = load_curves(args.runs + args.spread)  # labels apart: variant/seed0 against base/seed0
        chosen, spread = everything[:len(args.runs)], everything[len(args.runs):]
        check_metrics(everything, args.metrics)
        twin_of = twins(args.runs, args.spread)
    except (OSError, ValueError, runs.DamagedFile) as e:
        sys.exit(f"error: {e}")
    has_twins = any(twin is not None for twin in twin_of)
    try:  # every table before any is printed, so that an error leaves no half of them
        by_metric = {metric: (against_spread(chosen, spread, metric) if spread else per_epoch(chosen, metric),
                              against_twin(chosen, twin_of, spread, metric) if has_twins else None)
                     for metric in args.metrics}
    except (KeyError, TypeError, ValueError) as e:
        sys.exit(f"error: cannot set the runs against each other per epoch ({type(e).__name__}: {e}); "
                 f"check their {runs.METRICS}")
    for metric, (table, paired) in by_metric.items():
        print(f"{metric} per epoch" + (f" (spread: {', '.join(label for label, _ in spread)})" if spread else ""))
        print(table.to_string(float_format=lambda v: f"{v:.4f}"))
        if paired is not None:
            print(f"{metric}: each run against its twin at its seed, beside the spread's range")
            print(paired.to_string(float_format=lambda v: f"{v:+.4f}"))
            print("mean |value| over these epochs: " + ", ".join(
                f"{column} {paired[column].abs().mean():.4f}" for column in paired.columns))
    try:
        paths = save_figure(compared_curves(chosen, spread, args.metrics), args.name, settings.figures_dir(args.figures))
    except OSError as e:
        sys.exit(f"error: {e}; choose another --figures")
    for path in paths:
        print(f"wrote {path}")


def add_output_folders(p):
    p.add_argument("--figures", default=None, help="figures folder (default: $WAVES_FIGURES, else <runs root>/figures)")
    p.add_argument("--tables", default=None, help="tables folder (default: $WAVES_TABLES, else <runs root>/tables)")


def build_parser():
    parser = ArgumentParser(prog="python -m analysis", description=__doc__, formatter_class=HelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    p = commands.add_parser("tables", formatter_class=HelpFormatter,
                            help="score table (produce_scores.py) -> statistics over seeds as CSV, LaTeX, Markdown, "
                                 "and ours beside the paper's results (paper_comparison.csv, .md)")
    p.add_argument("--scores", default=None,
                   help="score CSV to read (default: $WAVES_SCORES, else <runs root>/scores.csv)")
    p.add_argument("--out", default=None,
                   help="folder for the tables (default: $WAVES_TABLES, else <runs root>/tables)")
    p.set_defaults(run=tables)
    p = commands.add_parser("squares", help="square-area theory: measured vs predicted frequency of waves "
                                            "confined to squares of side 4..32, and how well one pixel's "
                                            "spectrum tells the area (about a minute)")
    p.set_defaults(run=squares)
    p = commands.add_parser("erf", formatter_class=HelpFormatter,
                            help="effective receptive-field radius of untrained NWMs (T = 5..400) and CNNs (depth "
                                 "2..32) on random 64x64 images (a few minutes); with runs, of those trained models")
    p.add_argument("runs", nargs="*", metavar="RUN", help="trained runs (directories or shipped names): the radius "
                                                           "at the centre pixel of their own dataset's images")
    p.add_argument("--n", type=int_at_least(1), default=4, help="with runs: images averaged, the first of the split")
    p.add_argument("--split", default="test", choices=("train", "val", "test"), help="with runs: split of the images")
    add_data_root(p)
    add_threads(p)
    p.set_defaults(run=erf)
    p = commands.add_parser("waves", formatter_class=HelpFormatter,
                            help="phase, frequency, speed and directionality of trained recurrent runs' "
                                 "waves per object, figures, and one sound per class")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories or shipped models' names (NWM or ConvLSTM); "
                                                           "the maps and sounds come from the first of each dataset "
                                                           "and model")
    p.add_argument("--n", type=int_at_least(1), default=32, help="images measured, the first of the split")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    add_data_root(p)
    add_output_folders(p)
    p.add_argument("--sounds", default=None, help="WAV folder (default: sounds/ beside the figures folder)")
    add_threads(p)
    add_progress(p, log="one line per run")
    p.set_defaults(run=waves)
    p = commands.add_parser("classes", formatter_class=HelpFormatter,
                            help="per-class IoU, recall and precision and the confusion matrix of trained runs' "
                                 "pixels (float32), and the classes they confuse most")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories or shipped models' names")
    p.add_argument("--split", default="test", choices=("train", "val", "test"), help="split predicted")
    p.add_argument("--n", type=int_at_least(1), default=None, help="images predicted, the first of the split "
                                                                    "(default: all of it)")
    p.add_argument("--pairs", type=int_at_least(1), default=10, help="confusions printed, the largest first")
    add_data_root(p)
    add_output_folders(p)
    add_threads(p)
    add_progress(p, log="one line per run")
    p.set_defaults(run=classes)
    p = commands.add_parser("curves", formatter_class=HelpFormatter,
                            help="per-epoch metrics of runs (metrics.csv) in one figure, and per epoch whether each "
                                 "lies within the spread of other runs (--spread: e.g. seeds of a baseline)")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories, each drawn as a line")
    p.add_argument("--spread", nargs="+", default=[], metavar="RUN",
                   help="run directories whose min-max band per epoch the others are set against; a run with a "
                        "twin among them (the same seed) is also set against it, beside the band's width")
    p.add_argument("--metrics", nargs="+", default=["val_loss", "val_iou_foreground"],
                   help="metrics.csv columns, one panel each")
    p.add_argument("--name", default="curves_compared", help="the figure's file name, without .png")
    p.add_argument("--figures", default=None, help="figures folder (default: $WAVES_FIGURES, else <runs root>/figures)")
    p.set_defaults(run=curves)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    pd.set_option("display.width", 200)
    args.run(args)


if __name__ == "__main__":
    run_main(main)
