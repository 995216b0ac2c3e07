"""The paper's figures, drawn with matplotlib (Agg): each function returns a Figure.

`save_figure(fig, name)` writes <figures>/<name>.png (settings.figures_dir: $WAVES_FIGURES,
else <runs root>/figures), so every figure has a stable file name. Masks use one fixed
colour per class (background black, then tab10; class_colours).
"""

import colorsys

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch

import runs
import settings

WAVE_CMAP = "RdBu_r"  # hidden states are signed: red up, blue down, white at rest


def class_colours(num_classes):
    """Background black, then tab10's colours (tab20's beyond 11 classes); beyond 21 (an imported
    dataset may have up to 256) hues a golden-ratio step apart at three brightnesses, every class
    its own colour."""
    if num_classes <= 21:
        palette = plt.get_cmap("tab10" if num_classes <= 11 else "tab20").colors
        return [(0.0, 0.0, 0.0)] + list(palette[:num_classes - 1])
    steps = np.arange(num_classes - 1)
    return [(0.0, 0.0, 0.0)] + [colorsys.hsv_to_rgb((i * 0.6180339887) % 1, 0.8, 1.0 - 0.3 * (i % 3)) for i in steps]


def save_figure(fig, name, out_dir=None, pdf=False, dpi=100):
    """Writes <out_dir>/<name>.png (and .pdf if asked), closes the figure, returns the paths."""
    out_dir = settings.figures_dir(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png"] + ([out_dir / f"{name}.pdf"] if pdf else [])
    for path in paths:
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return paths


def mask_cmap(num_classes):
    return ListedColormap(class_colours(num_classes))


def show_image(ax, image, title=None):
    """A C x H x W image in [0, 1] (RGB or gray)."""
    image = np.asarray(image)
    if image.shape[0] == 3:
        ax.imshow(image.transpose(1, 2, 0), interpolation="nearest")
    else:
        ax.imshow(image[0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def show_mask(ax, mask, num_classes, title=None):
    ax.imshow(np.asarray(mask), cmap=mask_cmap(num_classes), vmin=0, vmax=num_classes - 1,
              interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def class_legend(fig, class_names, ncol=7):
    colours = class_colours(len(class_names))
    handles = [Patch(facecolor=c, edgecolor="gray", label=n) for c, n in zip(colours, class_names)]
    fig.legend(handles=handles, loc="lower center", ncol=min(ncol, len(class_names)), fontsize=8,
               frameon=False, bbox_to_anchor=(0.5, -0.02))


def show_wave(ax, frame, limit, title=None):
    """One hidden-state frame (H x W), on a symmetric colour scale +-limit."""
    image = ax.imshow(np.asarray(frame), cmap=WAVE_CMAP, vmin=-limit, vmax=limit, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    return image


def frame_indices(T, n):
    """n frame indices spread evenly over 0..T-1 (the first and the last included)."""
    return np.unique(np.linspace(0, T - 1, min(n, T)).round().astype(int))

# -----------------------------------------------------------------------------
# scores


def score_strip(scores, dataset, metric="iou_foreground"):
    """One dot per seed and a bar at the mean, for every model x variant on one dataset (trained runs
    only: the background-only row of produce_scores has no run)."""
    df = scores[(scores["dataset"] == dataset) & scores["run"].notna()].copy()
    df["label"] = [f"{row['model']}\n{runs.variant(row)}" for row in df.to_dict("records")]
    labels = sorted(df["label"].unique())
    fig, ax = plt.subplots(figsize=(max(4.0, 0.8 * len(labels) + 1.5), 3.2))
    for i, label in enumerate(labels):
        values = df.loc[df["label"] == label, metric].to_numpy()
        ax.bar(i, values.mean(), color="0.85", edgecolor="0.5", width=0.7)
        jitter = np.linspace(-0.15, 0.15, len(values)) if len(values) > 1 else [0.0]
        ax.plot(i + np.asarray(jitter), values, "o", color="tab:blue", markersize=4)
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_ylim(0, 1)
    ax.set_title(f"{dataset}: test {metric.replace('_', ' ')} per seed (bar: mean)", fontsize=10)
    fig.tight_layout()
    return fig


def learning_curves(runs_root, dataset, metric="val_iou_foreground"):
    """`metric` per epoch (metrics.csv) of every run on `dataset` under `runs_root`, one
    line per run, one colour per model and variant: how far each run got in its budget."""
    curves = []
    for run_dir in runs.find_runs(runs_root):
        config = runs.load_json(run_dir / runs.CONFIG)
        if config.get("dataset") == dataset and (run_dir / runs.METRICS).is_file():
            label = f"{config['model']} {runs.variant(config)}"
            curves.append((label, config.get("seed", 0), pd.read_csv(run_dir / runs.METRICS)))
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    labels = sorted({label for label, _, _ in curves})
    labelled = set()
    for label, _, history in sorted(curves, key=lambda c: c[:2]):
        colour = plt.cm.tab10(labels.index(label) % 10)
        ax.plot(history["epoch"], history[metric], color=colour, lw=1.2,
                label=None if label in labelled else label)  # one legend entry per model
        labelled.add(label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title(f"{dataset}: {metric.replace('_', ' ')} per epoch (one line per seed)", fontsize=10)
    if labels:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig

def compared_curves(curves, spread=(), metrics=("val_loss", "val_iou_foreground")):
    """One panel per metric of `metrics`: each curve (label, metrics.csv DataFrame) a coloured line, over
    the runs of `spread` (the same) as thin grey lines and the band between their min and max."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        if spread:
            band = pd.concat([h.set_index("epoch")[metric].rename(label) for label, h in spread], axis=1,
                             join="inner")
            ax.fill_between(band.index, band.min(axis=1), band.max(axis=1), color="0.85",
                            label=f"spread of {', '.join(label for label, _ in spread)}")
            for _, history in spread:
                ax.plot(history["epoch"], history[metric], color="0.5", lw=0.8)
        for i, (label, history) in enumerate(curves):
            ax.plot(history["epoch"], history[metric], color=plt.cm.tab10(i % 10), lw=1.5, marker="o", ms=3,
                    label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric.replace("_", " "))
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def parameters_plot(comparison, dataset, metric="iou_foreground"):
    """Test `metric` against parameters on `dataset` (analysis.tables.paper_comparison): per model, ours
    (filled, mean ± std over seeds where there are two) beside the paper's (open, its std where it gives
    one); a model with several variants (the U-Net's widths) as a curve, one with a single variant as a
    point, each labelled with its variant."""
    df = comparison[comparison["dataset"] == dataset].sort_values("num_params")
    fig, ax = plt.subplots(figsize=(5.8, 3.6))
    for i, (model, rows) in enumerate(df.groupby("model", sort=True)):
        colour = plt.cm.tab10(i % 10)
        x = rows["num_params"].to_numpy(float)
        curve = len(rows) > 1  # several variants: joined by a line, the paper's dashed
        ax.errorbar(x, rows[f"paper_{metric}_mean"], yerr=rows[f"paper_{metric}_std"].fillna(0), color=colour,
                    ls="--" if curve else "none", marker="o", mfc="white", capsize=3, label=f"{model}, paper")
        ours = rows[f"{metric}_mean"].notna().to_numpy()
        if ours.any():
            ax.errorbar(x[ours], rows[f"{metric}_mean"][ours], yerr=rows[f"{metric}_std"][ours].fillna(0),
                        color=colour, ls="-" if curve else "none", marker="o", capsize=3, label=f"{model}, ours")
        for xi, variant in zip(x, rows["variant"]):
            ax.annotate(variant if curve else model, (xi, 0.02), ha="center", fontsize=7, color=colour)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xticks(sorted(df["num_params"]))
    ax.tick_params(axis="x", labelsize=7, rotation=30)
    ax.set_xlabel("parameters")
    ax.set_ylabel(f"test {metric.replace('_', ' ')}")
    ax.set_ylim(0, 1.02)
    trained = "; ".join(f"{r.model} {r.variant}: {r.n_seeds} seed{'s' * (r.n_seeds > 1)}, {r.epochs} epochs"
                        for r in df.itertuples() if r.n_seeds)
    ax.set_title(f"{dataset}: ours filled ({trained or 'no runs yet'}),\nthe paper's open (mean over its seeds, "
                 f"300 epochs)", fontsize=8)
    ax.legend(fontsize=7, loc="center right")
    fig.tight_layout()
    return fig

# -----------------------------------------------------------------------------
# hidden states and temporal features


def hidden_frame_strip(sequence, n_frames=8, title=None, limit=None):
    """Frames of one hidden channel over time (sequence: T x H x W), evenly spaced."""
    sequence = np.asarray(sequence)
    steps = frame_indices(len(sequence), n_frames)
    limit = limit or float(np.abs(sequence).max()) or 1.0
    fig, axes = plt.subplots(1, len(steps), figsize=(1.5 * len(steps), 1.9), squeeze=False)
    for ax, t in zip(axes[0], steps):
        image = show_wave(ax, sequence[t], limit, f"t = {t + 1}")
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="hidden state")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def lstm_vs_nwm_figure(image, panels, n_frames=6, n_features=4):
    """The "LSTM vs NWM" figure: per model, hidden frames over time, then feature maps.

    panels: {model name: dict(sequence=T x H x W (one hidden channel), features=H x W x K
    (that channel's per-pixel temporal features), feature_label=str)}. Feature maps are
    shown for n_features of the K features, spread over them.
    """
    names = list(panels)
    columns = 1 + max(n_frames, n_features)
    fig, axes = plt.subplots(2 * len(names), columns, figsize=(1.5 * columns, 3.3 * len(names)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, name in enumerate(names):
        sequence, features = np.asarray(panels[name]["sequence"]), np.asarray(panels[name]["features"])
        frames_row, features_row = axes[2 * i], axes[2 * i + 1]
        limit = float(np.abs(sequence).max()) or 1.0
        for ax, t in zip(frames_row[1:], frame_indices(len(sequence), n_frames)):
            show_wave(ax, sequence[t], limit, f"{name}  t = {t + 1}")
        K = features.shape[-1]
        feature_limit = float(np.abs(features).max()) or 1.0
        for ax, k in zip(features_row[1:], frame_indices(K, n_features)):
            show_wave(ax, features[..., k], feature_limit, f"{panels[name]['feature_label']} {k}")
        show_image(frames_row[0], image, f"{name}: input")
        features_row[0].text(0.5, 0.5, f"{name}\ntemporal\nfeatures", ha="center", va="center", fontsize=10)
    fig.tight_layout()
    return fig

# -----------------------------------------------------------------------------
# square-area theory


def square_theory_plot(theory, classifier=None):
    """Measured vs predicted (1,1)-mode frequency against the side, the relative error, and
    (if given, from analysis.squares.area_classifier) the area classifier's accuracy against T."""
    columns = 3 if classifier else 2
    fig, axes = plt.subplots(1, columns, figsize=(4.2 * columns, 3.4))
    ax = axes[0]
    ax.plot(theory["side"], theory["predicted"], "-", color="0.3", label="predicted (grid theory)")
    ax.plot(theory["side"], theory["measured"], "o", color="tab:red", markersize=4, label="measured (FFT peak)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks([4, 8, 16, 32], ["4", "8", "16", "32"])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("square side s (pixels)")
    ax.set_ylabel("frequency (cycles per step)")
    ax.set_title("fundamental frequency falls as 1/s", fontsize=10)
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.plot(theory["side"], 100 * theory["relative_error"], "o-", markersize=3)
    ax.set_xlabel("square side s (pixels)")
    ax.set_ylabel("|measured - predicted| / predicted (%)")
    ax.set_title("relative error", fontsize=10)
    if classifier:
        ax = axes[2]
        steps = list(classifier["accuracy_by_steps"])
        ax.plot(steps, [classifier["accuracy_by_steps"][t] for t in steps], "o-", label="logistic regression")
        ax.axhline(classifier["chance"], color="0.5", linestyle="--", label="chance (largest bin)")
        ax.set_xscale("log")
        ax.set_xticks(steps, [str(t) for t in steps])
        ax.minorticks_off()
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("time steps T")
        ax.set_ylabel("test accuracy")
        ax.set_title(f"area bin from one pixel's spectrum ({len(classifier['bin_edges'])} bins)", fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def square_series_plot(series_by_side, dt=0.1):
    """The centre pixel's time series for a few sides (dict side -> series)."""
    fig, ax = plt.subplots(figsize=(7, 2.8))
    for side, series in series_by_side.items():
        ax.plot(np.arange(1, len(series) + 1), series, label=f"s = {side}", linewidth=1)
    ax.set_xlabel(f"step (dt = {dt})")
    ax.set_ylabel("centre pixel y_t")
    ax.legend(fontsize=8, ncol=len(series_by_side))
    ax.set_title("a square rings at a frequency set by its side", fontsize=10)
    fig.tight_layout()
    return fig

# -----------------------------------------------------------------------------
# receptive fields


def erf_maps_plot(maps, rows, pixel, titles):
    """ERF maps (each scaled to its maximum), one row of keys per model, the probed pixel marked."""
    columns = max(len(keys) for keys in rows)
    fig, axes = plt.subplots(len(rows), columns, figsize=(1.7 * columns, 2.1 * len(rows)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for row_axes, keys in zip(axes, rows):
        for ax, key in zip(row_axes, keys):
            erf = np.asarray(maps[key])
            ax.imshow(erf / (erf.max() or 1.0), cmap="magma", vmin=0, vmax=1, interpolation="nearest")
            ax.plot(pixel[1], pixel[0], "+", color="cyan", markersize=6)
            ax.set_title(titles[key], fontsize=9)
    fig.suptitle("|d logits(centre) / d input|, scaled to the maximum", fontsize=10)
    fig.tight_layout()
    return fig


def erf_radius_plot(table, fraction=0.9):
    """ERF radius against NWM steps T and against CNN depth L (analysis.receptive_fields.erf_radii's table)."""
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.2), sharey=True)
    nwm, cnn = table[table["model"] == "nwm"], table[table["model"] == "cnn"]
    axes[0].plot(nwm["steps_or_depth"], nwm["radius"], "o-", color="tab:red", label="NWM")
    axes[0].set_xlabel("recurrent steps T")
    axes[0].set_title("NWM: grows with T", fontsize=10)
    axes[1].plot(cnn["steps_or_depth"], cnn["radius"], "o-", color="tab:blue", label="CNN")
    axes[1].plot(cnn["steps_or_depth"], cnn["bound"], "--", color="0.5", label="window corner sqrt(2) L")
    axes[1].set_xlabel("CNN depth L (3x3 convs)")
    axes[1].set_title("CNN: bounded by its depth", fontsize=10)
    axes[0].set_ylabel(f"radius holding {fraction:.0%} of |gradient| (pixels)")
    for ax, values in zip(axes, (nwm["steps_or_depth"], cnn["steps_or_depth"])):
        ax.set_xscale("log")
        ax.set_xticks(list(values), [str(v) for v in values])
        ax.minorticks_off()
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig

# -----------------------------------------------------------------------------
# segmentation results


def sample_grid(images, masks, class_names, n=8, columns=8, titles=None):
    """The first n samples, each image (C x H x W in [0, 1]; sizes may differ) above its coloured mask,
    under its title if `titles` are given."""
    images, masks = list(images[:n]), list(masks[:n])
    n = len(images)
    columns = min(columns, n)
    rows = -(-n // columns)  # ceil
    fig, axes = plt.subplots(2 * rows, columns, figsize=(1.6 * columns, 3.2 * rows + 0.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        row, col = 2 * (i // columns), i % columns
        show_image(axes[row, col], images[i], titles[i] if titles else None)
        show_mask(axes[row + 1, col], masks[i], len(class_names))
    class_legend(fig, class_names)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.99, bottom=0.5 / (3.2 * rows + 0.6), wspace=0.06, hspace=0.06)
    return fig


def prediction_panel(image, mask, class_names, title=None):
    """One image (C x H x W in [0, 1]) beside its predicted mask, with a legend of the classes."""
    fig, axes = plt.subplots(1, 2, figsize=(4.6, 2.9))
    show_image(axes[0], image, title)
    show_mask(axes[1], mask, len(class_names), "predicted")
    class_legend(fig, class_names, ncol=4)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    return fig


def sample_predictions(images, masks, predictions, class_names, n=6):
    """Columns of samples: image, true mask, predicted mask."""
    n = min(n, len(images))
    fig, axes = plt.subplots(3, n, figsize=(1.6 * n, 5.2), squeeze=False)
    for i in range(n):
        show_image(axes[0, i], images[i], "image" if i == 0 else None)
        show_mask(axes[1, i], masks[i], len(class_names), "true" if i == 0 else None)
        show_mask(axes[2, i], predictions[i], len(class_names), "predicted" if i == 0 else None)
    class_legend(fig, class_names)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def confusion_plot(confusion, class_names, title="confusion matrix (rows: true, normalised)"):
    """A confusion matrix (rows = true class), each row normalised to sum to 1."""
    confusion = np.asarray(confusion, float)
    rates = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(0.6 * len(class_names) + 2, 0.6 * len(class_names) + 1.5))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for (i, j), rate in np.ndenumerate(rates):
        ax.text(j, i, f"{rate:.2f}", ha="center", va="center", fontsize=7,
                color="white" if rate > 0.5 else "black")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(class_names)), class_names, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, shrink=0.8, label="fraction of the true class")
    fig.tight_layout()
    return fig


def per_class_iou_plot(iou, class_names, title="per-class IoU (test split)"):
    """A bar per class; a class neither in the masks nor predicted (IoU undefined, NaN) is marked "absent",
    apart from a class missed entirely (IoU 0)."""
    iou = np.asarray(iou, float)
    fig, ax = plt.subplots(figsize=(0.7 * len(class_names) + 1.5, 3))
    ax.bar(range(len(class_names)), np.nan_to_num(iou), color=class_colours(len(class_names)), edgecolor="0.3")
    for i in np.flatnonzero(np.isnan(iou)):
        ax.text(i, 0.02, "absent", rotation=90, ha="center", va="bottom", fontsize=7, color="0.4")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("IoU")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig
