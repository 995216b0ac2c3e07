"""Which classes a trained run confuses: per-class IoU, recall and precision, and the confusion matrix of
its pixels on a split, evaluated in float32 as produce_scores.py evaluates.

    report = class_report(pretrained.load("results/runs/mnist/nwm-linear-T100-h2-seed0"))
    report["classes"], report["pairs"].head(10), report["confusion"]
    python -m analysis classes RUN [RUN ...]     # the same as tables and a confusion figure per run
"""
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import plotting
import runs
from analysis.trained import confusion_and_iou, load_trained, predict
from dataset_config import load_dataset


@torch.no_grad()
def class_report(model, split="test", data_root=None, n=None, batch_size=32, progress=False):
    """A trained model (pretrained.load) on the first `n` images of `split` of its dataset (all by default).
    Returns dict(
    classes: one row per class: pixels (true), predicted (pixels predicted as it), iou, recall, precision;
    confusion: true class x predicted class pixel counts, both labelled with the class names;
    pairs: every off-diagonal cell with pixels, largest first: true, predicted, pixels, share (of the true
           class's pixels);
    run, split, images)."""
    names = list(model.class_names)
    images, masks = load_dataset(model.config["dataset"], split, data_root, limit=n)
    predictions = predict(model, images, batch_size, progress, desc=model.config["run_name"])
    confusion, iou = confusion_and_iou(predictions, masks, len(names))
    true, predicted, hits = confusion.sum(1), confusion.sum(0), np.diag(confusion)
    with np.errstate(invalid="ignore", divide="ignore"):  # a class absent from the split: NaN, not 0
        classes = pd.DataFrame({"class": names, "pixels": true, "predicted": predicted, "iou": iou,
                                "recall": hits / true, "precision": hits / predicted})
    cells = [(names[i], names[j], int(confusion[i, j]), confusion[i, j] / true[i])
             for i, j in zip(*np.nonzero(confusion)) if i != j]
    pairs = (pd.DataFrame(cells, columns=["true", "predicted", "pixels", "share"])
             .sort_values("pixels", ascending=False, kind="stable").reset_index(drop=True))
    return dict(classes=classes, confusion=pd.DataFrame(confusion, index=names, columns=names), pairs=pairs,
                run=model.config["run_name"], split=split, images=len(images))


def report_name(run_name):
    """The file-name part of a run: its name with / as _ (mnist/nwm-linear-T100-h2-seed0 ->
    mnist_nwm-linear-T100-h2-seed0)."""
    return run_name.replace("/", "_")


def write_reports(sources, figures, tables, split="test", data_root=None, n=None, progress=False):
    """class_report for each run (a run directory, a checkpoint in one, or a shipped model's name), all
    of them loaded and checked first (analysis.trained.load_trained), and the output folders made, before
    minutes of predicting (a progress bar if `progress`, else a line per run); writes
    <tables>/classes_<name>_<split>.csv, <tables>/confusion_<name>_<split>.csv and
    <figures>/confusion_<name>_<split>.png per run. Returns ([reports], [paths written])."""
    models = load_trained(sources, split, data_root)
    names = {}
    for model in models:
        name = report_name(model.config["run_name"])
        if name in names:
            raise ValueError(f"{names[name]} and {model.source} are both run {model.config['run_name']}: their "
                             f"reports would overwrite each other; analyse them in two calls with other --tables "
                             f"and --figures")
        names[name] = model.source
    for folder in (tables, figures):
        runs.make_dir(Path(folder))
    reports, paths = [], []
    for model in models:
        report = class_report(model, split, data_root, n, progress=progress)
        if not progress:
            print(f"{model.source}: {report['images']} {split} images predicted", flush=True)
        name = f"{report_name(report['run'])}_{split}"
        for kind, frame, index in (("classes", report["classes"], False), ("confusion", report["confusion"], True)):
            paths.append(Path(tables) / f"{kind}_{name}.csv")
            runs.save_text(frame.to_csv(index=index, float_format="%.6g"), paths[-1])
        title = f"{report['run']}, {split} ({report['images']} images): pixels per true class (rows), normalised"
        paths += plotting.save_figure(plotting.confusion_plot(report["confusion"].to_numpy(), report["confusion"].index,
                                                              title=title), f"confusion_{name}", figures)
        reports.append(report)
    return reports, paths
