"""Which classes a trained run confuses: per-class IoU, recall and precision, and the confusion matrix of
its pixels on a split, evaluated in float32 as produce_scores.py evaluates.

    report = class_report("results/runs/mnist/nwm-linear-T100-h2-seed0")
    report["classes"], report["pairs"].head(10), report["confusion"]
    python -m analysis classes RUN [RUN ...]     # the same as tables and a confusion figure per run
"""
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import plotting
import pretrained
import runs
from analysis.trained import confusion_and_iou, predict
from dataset_config import load_dataset, read_metadata


@torch.no_grad()
def class_report(run_dir, split="test", data_root=None, n=None, batch_size=32):
    """The run's model on the first `n` images of `split` (all by default). Returns dict(
    classes: one row per class: pixels (true), predicted (pixels predicted as it), iou, recall, precision;
    confusion: true class x predicted class pixel counts, both labelled with the class names;
    pairs: every off-diagonal cell with pixels, largest first: true, predicted, pixels, share (of the true
           class's pixels);
    run, split, images)."""
    model = pretrained.load(run_dir)
    names = list(model.class_names)
    images, masks = load_dataset(model.config["dataset"], split, data_root, limit=n)
    confusion, iou = confusion_and_iou(predict(model, images, batch_size), masks, len(names))
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


def write_reports(run_dirs, figures, tables, split="test", data_root=None, n=None):
    """class_report for each run (a run directory or a shipped model's name), checked first (every run's checkpoint and data, before minutes of
    predicting); writes <tables>/classes_<name>_<split>.csv, <tables>/confusion_<name>_<split>.csv and
    <figures>/confusion_<name>_<split>.png per run. Returns ([reports], [paths written])."""
    run_dirs = [pretrained.resolve(str(source))[0] for source in run_dirs]  # shipped names too
    for run_dir in run_dirs:
        dataset = runs.load_json(run_dir / runs.CONFIG)["dataset"]
        load_dataset(dataset, split, data_root, limit=1)
        read_metadata(dataset, data_root)
    reports, paths = [], []
    for run_dir in run_dirs:
        report = class_report(run_dir, split, data_root, n)
        name = f"{report_name(report['run'])}_{split}"
        runs.make_dir(Path(tables))
        for kind, frame, index in (("classes", report["classes"], False), ("confusion", report["confusion"], True)):
            paths.append(Path(tables) / f"{kind}_{name}.csv")
            runs.save_text(frame.to_csv(index=index, float_format="%.6g"), paths[-1])
        title = f"{report['run']}, {split} ({report['images']} images): pixels per true class (rows), normalised"
        paths += plotting.save_figure(plotting.confusion_plot(report["confusion"].to_numpy(), report["confusion"].index,
                                                              title=title), f"confusion_{name}", figures)
        reports.append(report)
    return reports, paths
