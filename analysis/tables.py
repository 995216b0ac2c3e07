"""Score tables: one row per run (produce_scores.py) -> statistics over seeds per configuration,
as CSV, LaTeX and Markdown, each dataset's background-only row (predicting background
everywhere) first and apart.

    table = score_tables(pd.read_csv("results/scores.csv"))
    write_tables(table, "runs/tables")
"""
from pathlib import Path

import pandas as pd
import torch

import configs
import runs
from metrics import METRIC_NAMES
from models import build_model, count_parameters
from produce_scores import BASELINE, whole_numbers

# a configuration: its variant (runs.variant), its model's other settings (runs.MODEL_COLUMNS) and its size
# (num_params, which the settings the table has no column for change: --c-mid, --readout-width, --readout-depth),
# on one data
GROUP_KEYS = ("dataset", "data", "model", "variant", *(c for c in runs.MODEL_COLUMNS if c not in runs.VARIANT_KEYS),
              "train_size", "num_params")
STATISTICS = ("mean", "std", "min", "median", "max")


def known(row):
    """A table row without its empty cells, as runs.variant and runs.steps read a run's settings."""
    return {k: v for k, v in row.items() if not pd.isna(v)}


def variants(scores):
    """Each row's variant (runs.variant: readout, "depth 8", "width 4")."""
    return [runs.variant(known(row)) for row in scores.to_dict("records")]


def score_tables(scores):
    """Per dataset x model x variant (readout, CNN depth or U-Net width): every metric's
    mean, std, min, median and max over seeds, with n_seeds and num_params.

    `scores` has one row per run (produce_scores.py). Runs that differ in T, hidden
    channels, training-set size or size (num_params: as --c-mid or the readout's width and
    depth change it) are kept apart, so no group mixes configurations.
    Runs on other data (the `data` column) are kept apart too. The background-only rows
    (model "background only") join no group: each stays a row of its own, first under its
    dataset, its value as mean, min, median and max, with no std, n_seeds or num_params.
    Columns: the keys, n_seeds, num_params, then `<metric>_<statistic>`.
    """
    df = scores.copy()
    baseline = df["model"] == BASELINE
    df["variant"] = ""
    df.loc[~baseline, "variant"] = variants(df[~baseline])
    keys = [k for k in GROUP_KEYS if k in df.columns]
    metrics = [m for m in METRIC_NAMES if m in df.columns]
    parts = []
    if (~baseline).any():
        grouped = df[~baseline].groupby(keys, dropna=False, sort=True)
        table = grouped.size().rename("n_seeds").to_frame()
        for metric in metrics:
            stats = grouped[metric].agg(list(STATISTICS))
            table[[f"{metric}_{s}" for s in STATISTICS]] = stats.to_numpy()
        parts.append(table.reset_index())
    if baseline.any():
        alone = df.loc[baseline, keys].assign(n_seeds=None, num_params=None)
        for metric in metrics:
            for s in STATISTICS:
                alone[f"{metric}_{s}"] = df.loc[baseline, metric] if s != "std" else float("nan")
        parts.append(alone)
    table = pd.concat(parts, ignore_index=True)
    # num_params is a key, but its column stays where it was: after n_seeds, before the statistics
    columns = [c for c in table.columns if c != "num_params"]
    columns.insert(columns.index("n_seeds") + 1, "num_params")
    table = table[columns]
    for column in (*GROUP_KEYS[4:], "n_seeds"):
        if column in table.columns:
            table[column] = whole_numbers(table[column])
    # background only first; "depth 16" after "depth 8": order variants by their number where they end in one
    number = pd.to_numeric(table["variant"].str.extract(r"(\d+)$")[0], errors="coerce")
    order = (table.assign(_trained=table["model"] != BASELINE, _number=number)
             .sort_values(["dataset", "_trained", "model", "_number", "variant",
                           *[k for k in ("data",) if k in table.columns]], kind="stable"))
    return table.loc[order.index].reset_index(drop=True)


# short column titles for the formatted tables
METRIC_TITLES = {"iou_foreground": "fg IoU", "acc_foreground": "fg acc", "miou": "mIoU", "acc": "acc",
                 "loss": "loss", "loss_foreground": "fg loss"}


def _formatted_rows(table):
    """Header and rows of strings: keys, n, params, each metric as mean ± std, and the
    min / median / max of the foreground IoU (the paper's headline metric). A background-only
    row shows its values alone and leaves n, params, the losses it has none of and the
    spread empty."""
    header = ["dataset", "data", "model", "variant", "n", "params"]
    metrics = [m for m in METRIC_TITLES if f"{m}_mean" in table.columns]
    header += [METRIC_TITLES[m] for m in metrics] + ["fg IoU min / median / max"]
    rows = []
    for r in table.to_dict("records"):
        if r["model"] == BASELINE:
            row = [r["dataset"], str(r.get("data", "")), r["model"], "", "", ""]
            row += ["" if pd.isna(r[f"{m}_mean"]) else f"{r[f'{m}_mean']:.3f}" for m in metrics]
            rows.append(row + [""])
            continue
        row = [r["dataset"], str(r.get("data", "")), r["model"], str(r["variant"]) + runs.steps(known(r)),
               str(r["n_seeds"]), f"{int(r['num_params']):,}"]
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


def _write_texts(out_dir, texts):
    """Writes each {file name: text} to out_dir, each renamed over the old one whole (runs.WriteError
    when it cannot be written); returns the paths."""
    out_dir = Path(out_dir)
    runs.make_dir(out_dir)
    for file_name, text in texts.items():
        runs.save_text(text, out_dir / file_name)
    return [out_dir / file_name for file_name in texts]


def write_tables(table, out_dir, name="scores"):
    """Writes <name>.csv (every statistic), <name>.tex and <name>.md (formatted) to out_dir."""
    return _write_texts(out_dir, {f"{name}.csv": table.to_csv(index=False), f"{name}.tex": to_latex(table),
                                  f"{name}.md": to_markdown(table)})


# -----------------------------------------------------------------------------
# ours beside the paper's


def paper_model_config(dataset, model, variant):
    """build_model keywords of a configuration of configs.PAPER_RESULTS ("linear", "depth 8", "width 4"):
    the paper's settings, its variant set."""
    key, _, value = variant.rpartition(" ")
    return configs.model_config(dataset, model, **({key: int(value)} if key else {"readout": value}))


def _runs_of(scores, dataset, model, config, num_params):
    """The runs of `scores` on the paper's data of `dataset` with the paper's model `config`: its variant,
    steps and hidden channels (the score table's model columns) and its size (num_params, which the
    settings the table has no column for change, as c_mid and the head's width), trained on the whole
    train split; one per seed (the first, where a run was scored twice under two names)."""
    wanted = runs.model_columns({"model": model, **config})
    rows = scores[(scores["dataset"] == dataset) & (scores["model"] == model) & (scores["data"] == "paper")
                  & scores["run"].notna() & (scores["num_params"] == num_params)]
    if "train_size" in rows.columns:
        rows = rows[rows["train_size"].isna()]
    for column, value in wanted.items():
        if column in rows.columns:
            rows = rows[rows[column].isna()] if value is None else rows[rows[column] == value]
    return rows.drop_duplicates("seed")


def paper_comparison(scores):
    """One row per configuration the paper reports (configs.PAPER_RESULTS), in its order: our test fg IoU
    and fg accuracy over the seeds of `scores` (produce_scores.py) with the paper's settings on the paper's
    data beside the paper's, the parameters, seeds and epochs (the runs' epochs differ where it lists
    several), and the seeds that collapsed (test fg IoU 0: no foreground pixel right), which the means count
    as the paper counts its collapses. A configuration we have no run of keeps the paper's numbers, with
    n_seeds 0."""
    rows = []
    for (dataset, model, variant), (iou, iou_std, acc, acc_std) in configs.PAPER_RESULTS.items():
        config = paper_model_config(dataset, model, variant)
        with torch.device("meta"):  # the parameter count without the memory or the initialisation
            num_params = count_parameters(build_model(model, **config))
        ours = _runs_of(scores, dataset, model, config, num_params)
        epochs = sorted(ours["epochs_run"].dropna().astype(int).unique())
        rows.append(dict(
            dataset=dataset, model=model, variant=variant, num_params=num_params, n_seeds=len(ours),
            epochs=" / ".join(map(str, epochs)),
            collapsed_seeds=" ".join(str(int(seed)) for seed in sorted(ours.loc[ours["iou_foreground"] == 0, "seed"])),
            iou_foreground_mean=ours["iou_foreground"].mean(), iou_foreground_std=ours["iou_foreground"].std(),
            paper_iou_foreground_mean=iou, paper_iou_foreground_std=iou_std,
            acc_foreground_mean=ours["acc_foreground"].mean(), acc_foreground_std=ours["acc_foreground"].std(),
            paper_acc_foreground_mean=acc, paper_acc_foreground_std=acc_std))
    return pd.DataFrame(rows)


def _mean_std(mean, std, digits):
    if pd.isna(mean):
        return ""
    return f"{mean:.{digits}f}" + ("" if pd.isna(std) else f" ± {std:.{digits}f}")


def comparison_markdown(comparison):
    """The comparison as a Markdown table: ours to three digits, the paper's to its two."""
    header = ["dataset", "model", "variant", "params", "seeds", "epochs", "fg IoU, ours", "fg IoU, paper",
              "fg acc, ours", "fg acc, paper"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in comparison.to_dict("records"):
        collapsed = r["collapsed_seeds"].split() if isinstance(r["collapsed_seeds"], str) else []
        seeds = str(r["n_seeds"]) + (f" (seed {', '.join(collapsed)} at fg IoU 0)" if collapsed else "")
        cells = [r["dataset"], r["model"], r["variant"], f"{r['num_params']:,}", seeds,
                 "" if pd.isna(r["epochs"]) else str(r["epochs"]),
                 _mean_std(r["iou_foreground_mean"], r["iou_foreground_std"], 3),
                 _mean_std(r["paper_iou_foreground_mean"], r["paper_iou_foreground_std"], 2),
                 _mean_std(r["acc_foreground_mean"], r["acc_foreground_std"], 3),
                 _mean_std(r["paper_acc_foreground_mean"], r["paper_acc_foreground_std"], 2)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_comparison(comparison, out_dir, name="paper_comparison"):
    """Writes <name>.csv and <name>.md to out_dir."""
    return _write_texts(out_dir, {f"{name}.csv": comparison.to_csv(index=False),
                                  f"{name}.md": comparison_markdown(comparison)})


# what `python -m analysis tables` writes to its folder: write_tables' and write_comparison's files, default names
TABLES_COMMAND_FILES = ("scores.csv", "scores.tex", "scores.md", "paper_comparison.csv", "paper_comparison.md")
