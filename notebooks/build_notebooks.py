"""Writes the notebooks in this folder (without outputs) from the cell sources below.

    python notebooks/build_notebooks.py

The notebooks are thin: the work is done by analysis.py, plotting.py and animate.py at
the repository root. Each reads its inputs from environment variables (see
analysis.figure_settings): WAVES_SCORES, WAVES_FIGURE_RUNS, WAVES_DATA_ROOT,
WAVES_FIGURES, WAVES_TABLES and WAVES_QUICK=1 (small sizes, for the tests). A part
whose run or dataset is missing prints what is missing and is skipped.
"""
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent


class MD(str):
    """A markdown cell (every other cell is code)."""


SETUP = '''\
import sys
from pathlib import Path

# the repository root: the first folder upwards that holds analysis.py
ROOT = next(p for p in (Path.cwd(), *Path.cwd().parents) if (p / "analysis.py").is_file())
sys.path.insert(0, str(ROOT))

from IPython.display import Image, display

import analysis
import plotting

S = analysis.figure_settings()
S'''

NOTEBOOKS = {
    "scores_tables": [
        MD("# Score tables\n\nTest metrics per dataset x model x variant (readout, CNN depth or U-Net width): "
        "mean ± std and min / median / max over seeds, from the score table that `produce_scores.py` "
        "writes. Tables go to `WAVES_TABLES` (CSV, LaTeX, Markdown), one figure per dataset to `WAVES_FIGURES`."),
        SETUP,
        '''\
import pandas as pd
from IPython.display import Markdown

if S["scores"].is_file():
    scores = pd.read_csv(S["scores"])
    table = analysis.score_tables(scores)
    for path in analysis.write_tables(table, S["tables"]):
        print("wrote", path)
    display(Markdown(analysis.to_markdown(table)))
else:
    scores = None
    print(f"missing: {S['scores']} (make it with: python produce_scores.py)")''',
        MD("Foreground IoU of every seed (dots) and the mean (bars), per dataset."),
        '''\
if scores is not None:
    for dataset in sorted(scores["dataset"].unique()):
        path = plotting.save_figure(plotting.score_strip(scores, dataset), f"scores_{dataset}", S["figures"])[0]
        display(Image(filename=str(path)))''',
        MD("Learning curves of the runs under `WAVES_FIGURE_RUNS`: validation foreground IoU per epoch, "
           "which shows how far each run got within its budget."),
        '''\
if scores is not None:
    for dataset in sorted(scores["dataset"].unique()):
        path = plotting.save_figure(plotting.learning_curves(S["runs"], dataset), f"curves_{dataset}",
                                    S["figures"])[0]
        display(Image(filename=str(path)))''',
    ],
    "wave_animations": [
        MD("# Hidden-state animations\n\nThe NWM's waves and, for contrast, the LSTM's hidden state, on one test "
        "image of each dataset: a GIF (input, hidden channel 0 over time, predicted and true mask) and a strip "
        "of frames, under `WAVES_FIGURES/animations`."),
        SETUP,
        '''\
from animate import make_animation
from dataset_config import DatasetError

OUT = S["figures"] / "animations"
for dataset in ("tetrominoes", "multi_mnist", "polygons"):
    for model in ("nwm", "lstm"):
        run = analysis.find_run(S["runs"], dataset, model)
        if run is None:
            print(f"missing: no finished {model} run on {dataset} under {S['runs']}; skipped")
            continue
        try:
            gif, strip = make_animation(run, "test", 0, 0, OUT, S["data"], stride=1 if S["quick"] else 2)
        except DatasetError as e:
            print(f"missing: {e}; skipped")
            continue
        print(f"{dataset}, {model}: {gif}")
        display(Image(filename=str(gif)), Image(filename=str(strip)))''',
    ],
    "fig_lstm_vs_nwm": [
        MD("# LSTM vs NWM\n\nOne Tetrominoes test image: each model's hidden channel 0 over time, and the "
        "per-pixel temporal features its readout computes from that channel (the projection on the learned "
        "basis for the linear readout, FFT magnitudes for the fft readout)."),
        SETUP,
        '''\
import runs
from dataset_config import DatasetError, load_dataset

INDEX = 0  # which test image
panels, image = {}, None
for name in ("lstm", "nwm"):
    run = analysis.find_run(S["runs"], "tetrominoes", name)
    if run is None:
        print(f"missing: no finished {name} run on tetrominoes under {S['runs']}; skipped")
        continue
    try:
        images, _ = load_dataset("tetrominoes", "test", S["data"], limit=INDEX + 1)
    except DatasetError as e:
        print(f"missing: {e}; skipped")
        break
    model, config = runs.load_model(run)
    image = images[INDEX]
    _, sequence = analysis.hidden_sequence(model, image)
    features = analysis.temporal_feature_maps(model, sequence)
    panels[name.upper()] = dict(sequence=sequence[:, 0], features=features[:, :, 0],
                                feature_label=f"{config['readout']} feature")''',
        '''\
if panels:
    fig = plotting.lstm_vs_nwm_figure(image, panels)
    path = plotting.save_figure(fig, "lstm_vs_nwm", S["figures"], pdf=True)[0]
    display(Image(filename=str(path)))''',
    ],
    "square_area_theory": [
        MD("# Hearing the area of a square\n\nA wave confined to a square of side s (zero state outside) rings "
        "mainly in its (1,1) mode, whose frequency falls as 1/s. The simulation runs the NWM's own step with "
        "the Laplacian coupling, omega = alpha = 0, dt = 0.1 and a small amplitude (tanh nearly linear); the "
        "prediction is lambda_11 = 8 sin²(π / (2(s+1))), cos(theta) = 1 - dt² lambda / 2 (SPEC section 6)."),
        SETUP,
        '''\
if S["quick"]:
    SIDES, T = range(4, 11), 1000
    CLASSIFIER = dict(sides=range(4, 13), n_bins=3, T=300, n_samples=90, steps=(100,))
else:
    SIDES, T = range(4, 33), 4000
    CLASSIFIER = dict()  # the defaults: sides 4..24 in 7 bins, 600 squares, T = 1000

theory = analysis.square_theory(SIDES, T)
print(f"largest relative error over s = {SIDES.start}..{SIDES.stop - 1}: {theory['relative_error'].max():.3%}")
theory''',
        '''\
series = {side: analysis.square_wave_series(side, min(T, 1000)) for side in (4, 8, 16)}
path = plotting.save_figure(plotting.square_series_plot(series), "square_series", S["figures"])[0]
display(Image(filename=str(path)))''',
        MD("Classify the area (bins of the side) from the magnitude spectrum of one random pixel inside a square "
        "of random side and amplitude, with a logistic regression; T steps must span a few periods of the "
        "largest square's fundamental."),
        '''\
classifier = analysis.area_classifier(**CLASSIFIER)
print(f"chance {classifier['chance']:.3f}; accuracy by number of steps:", classifier["accuracy_by_steps"])
path = plotting.save_figure(plotting.square_theory_plot(theory, classifier), "square_area_theory", S["figures"],
                            pdf=True)[0]
display(Image(filename=str(path)))
bins = [f"s {a}-{b}" for a, b in classifier["bin_edges"]]
fig = plotting.confusion_plot(classifier["confusion"], bins, "area bin from one pixel's spectrum")
display(Image(filename=str(plotting.save_figure(fig, "square_area_confusion", S["figures"])[0])))''',
    ],
    "multi_polygon": [
        MD("# Multi-polygon segmentation\n\nThe NWM on the Polygons test split: sample predictions, per-class "
        "IoU, the confusion matrix, and animations of polygons with different numbers of sides."),
        SETUP,
        '''\
import runs
from animate import make_animation
from dataset_config import DatasetError, get_info, load_dataset

info = get_info("polygons")
run = analysis.find_run(S["runs"], "polygons", "nwm")
ready = False
if run is None:
    print(f"missing: no finished nwm run on polygons under {S['runs']}; skipped")
else:
    try:
        images, masks = load_dataset("polygons", "test", S["data"])
        ready = True
    except DatasetError as e:
        print(f"missing: {e}; skipped")
if ready:
    if S["quick"]:
        images, masks = images[:16], masks[:16]
    model, config = runs.load_model(run)
    predictions = analysis.predict(model, images)
    confusion, iou = analysis.confusion_and_iou(predictions, masks, info.num_classes)
    print(run, dict(zip(info.class_names, iou.round(3))))''',
        '''\
if ready:
    figures = {"polygons_samples": plotting.sample_predictions(images, masks, predictions, info.class_names),
               "polygons_iou_per_class": plotting.per_class_iou_plot(iou, info.class_names),
               "polygons_confusion": plotting.confusion_plot(confusion, info.class_names)}
    for name, fig in figures.items():
        display(Image(filename=str(plotting.save_figure(fig, name, S["figures"])[0])))''',
        MD("One animation per number of sides: the first test image holding a polygon of that class."),
        '''\
if ready:
    shown = 0
    for label in range(1, info.num_classes):
        holding = (masks == label).flatten(1).any(1).nonzero().flatten()
        if len(holding) == 0 or shown == (2 if S["quick"] else info.num_classes - 1):
            continue
        gif, strip = make_animation(run, "test", int(holding[0]), 0, S["figures"] / "animations", S["data"],
                                    stride=1 if S["quick"] else 2)
        print(f"{info.class_names[label]}: {gif}")
        display(Image(filename=str(gif)))
        shown += 1''',
    ],
    "receptive_field": [
        MD("# Effective receptive fields\n\n|d logits(pixel) / d input| for the centre pixel, averaged over random "
        "images and initialisations: the NWM's grows with its number of steps T (waves carry information "
        "across the image), the CNN's stays inside its (2L+1) x (2L+1) window."),
        SETUP,
        '''\
if S["quick"]:
    images, steps, depths, seeds = analysis.probe_images(n=2, size=32), (5, 20, 60), (2, 4), (0,)
else:
    images, steps, depths, seeds = analysis.probe_images(), (5, 10, 20, 50, 100, 200, 400), (2, 4, 8, 16, 32), (0, 1, 2)
pixel = (images.shape[-2] // 2, images.shape[-1] // 2)
table, maps = analysis.erf_radii(images, pixel, steps, depths, seeds=seeds)
table''',
        '''\
path = plotting.save_figure(plotting.erf_radius_plot(table), "erf_radius", S["figures"], pdf=True)[0]
display(Image(filename=str(path)))
rows = [[("nwm", t) for t in steps], [("cnn", d) for d in depths]]
titles = {k: f"NWM T={k[1]}" if k[0] == "nwm" else f"CNN L={k[1]}" for k in maps}
path = plotting.save_figure(plotting.erf_maps_plot(maps, rows, pixel, titles), "erf_maps", S["figures"])[0]
display(Image(filename=str(path)))''',
        MD("Trained Tetrominoes runs, where they exist: the ERF radius on test images, at the centre pixel."),
        '''\
import pandas as pd

import runs
from dataset_config import DatasetError, load_dataset

trained = [r for r in runs.find_runs(S["runs"]) if runs.is_finished(r)
           and runs.load_json(r / runs.CONFIG)["dataset"] == "tetrominoes"
           and runs.load_json(r / runs.CONFIG)["model"] in ("nwm", "lstm", "cnn")] if S["runs"].is_dir() else []
if trained:
    try:
        test_images, _ = load_dataset("tetrominoes", "test", S["data"], limit=4)
    except DatasetError as e:
        print(f"missing: {e}; skipped")
        trained = []
rows = []
for run in trained:
    model, config = runs.load_model(run)
    erf = analysis.effective_receptive_field(model, test_images, (32, 32))
    rows.append(dict(run=config["run_name"], model=config["model"], T=config["T"], depth=config.get("depth"),
                     radius=analysis.radius_of_mass(erf, (32, 32))))
pd.DataFrame(rows) if rows else print(f"no finished Tetrominoes runs under {S['runs']}")''',
    ],
}


def build():
    for name, cells in NOTEBOOKS.items():
        notebook = new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                         "language": "python"}})
        notebook.cells = [new_markdown_cell(str(c)) if isinstance(c, MD) else new_code_cell(c) for c in cells]
        for i, cell in enumerate(notebook.cells):
            cell.id = f"cell{i}"  # stable ids: rebuilding an unchanged notebook changes no byte
        nbformat.write(notebook, HERE / f"{name}.ipynb")
        print(f"wrote {HERE / name}.ipynb")


if __name__ == "__main__":
    build()
