"""Segmentation metrics (docs/methods.md, "Metrics").

Per image, then averaged over the images of a split:
    acc              pixel accuracy over all pixels
    acc_foreground   accuracy over ground-truth foreground (non-zero) pixels
    iou_foreground   on ground-truth foreground pixels: sum_c |pred_c & true_c| over
                     sum_c |pred_c | true_c|, which equals correct / (correct + 2 wrong)
    loss             cross-entropy over all pixels
    loss_foreground  cross-entropy over ground-truth foreground pixels
Images without foreground pixels have no foreground metrics and are left out of those
averages. Over the whole split, from one confusion matrix (background included):
    miou             mean over classes of TP / (TP + FP + FN), classes that never occur
                     in prediction or truth left out
    iou_per_class    that IoU for each class (NaN where the class never occurs)
"""
import math

import torch
import torch.nn.functional as F

METRIC_NAMES = ("acc", "acc_foreground", "iou_foreground", "loss", "loss_foreground", "miou")
PER_IMAGE = ("acc", "acc_foreground", "iou_foreground", "loss", "loss_foreground")


def per_image_metrics(logits, masks):
    """Per-image metrics of a batch: dict name -> B tensor (NaN where undefined)."""
    logits = logits.float()
    pixel_loss = F.cross_entropy(logits, masks, reduction="none").flatten(1)
    correct = (logits.argmax(1) == masks).flatten(1).float()
    foreground = (masks != 0).flatten(1).float()
    n_fg = foreground.sum(1)
    correct_fg = (correct * foreground).sum(1)
    wrong_fg = n_fg - correct_fg
    no_fg = n_fg == 0
    undefined = torch.full_like(n_fg, math.nan)
    return {
        "acc": correct.mean(1),
        "acc_foreground": torch.where(no_fg, undefined, correct_fg / n_fg.clamp(min=1)),
        "iou_foreground": torch.where(no_fg, undefined, correct_fg / (correct_fg + 2 * wrong_fg).clamp(min=1)),
        "loss": pixel_loss.mean(1),
        "loss_foreground": torch.where(no_fg, undefined, (pixel_loss * foreground).sum(1) / n_fg.clamp(min=1)),
    }


def confusion_matrix(predictions, masks, num_classes):
    """num_classes x num_classes counts, rows = true class, columns = predicted class."""
    index = masks.flatten().long() * num_classes + predictions.flatten().long()
    # index_add_ into a fixed size, not bincount: bincount waits for the device to size its output
    counts = torch.zeros(num_classes ** 2, dtype=torch.long, device=index.device)
    return counts.index_add_(0, index, torch.ones_like(index)).view(num_classes, num_classes)


def iou_from_confusion(confusion):
    """Per-class IoU from a confusion matrix; NaN for classes absent from both."""
    confusion = confusion.double()
    tp = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, math.nan))


class SegmentationMetrics:
    """Accumulates the metrics over batches on the batches' device, without waiting for it;
    `compute()` returns plain Python numbers."""

    def __init__(self, num_classes, device="cpu"):
        self.num_classes = num_classes
        self.sums = {name: torch.zeros((), dtype=torch.float64, device=device) for name in PER_IMAGE}
        self.counts = {name: torch.zeros((), dtype=torch.float64, device=device) for name in PER_IMAGE}
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)

    @torch.no_grad()
    def update(self, logits, masks):
        for name, values in per_image_metrics(logits, masks).items():
            defined = ~torch.isnan(values)
            self.sums[name] += torch.where(defined, values, 0).double().sum()
            self.counts[name] += defined.sum()
        self.confusion += confusion_matrix(logits.argmax(1), masks, self.num_classes)

    def state_dict(self):
        """The sums so far, on the CPU (a training pass paused between two batches keeps them in last.pt)."""
        return dict(sums={k: v.cpu() for k, v in self.sums.items()}, counts={k: v.cpu() for k, v in self.counts.items()},
                    confusion=self.confusion.cpu())

    def load_state_dict(self, state):
        for name in PER_IMAGE:
            self.sums[name].copy_(state["sums"][name])
            self.counts[name].copy_(state["counts"][name])
        self.confusion.copy_(state["confusion"])

    def compute(self):
        # one transfer at the end, not one per batch (keeps a GPU run asynchronous)
        result = {name: (self.sums[name] / self.counts[name]).item() if self.counts[name] > 0 else math.nan
                  for name in PER_IMAGE}
        iou = iou_from_confusion(self.confusion).cpu()
        present = ~torch.isnan(iou)
        result["miou"] = iou[present].mean().item() if present.any() else math.nan
        result["iou_per_class"] = [None if math.isnan(v) else v for v in iou.tolist()]
        return result


def background_only_metrics(masks, num_classes):
    """Metrics of predicting background everywhere: the floor a trained model must beat.

    Such a prediction has no meaningful cross-entropy, so the losses are left out.
    """
    metrics = SegmentationMetrics(num_classes)
    for chunk in masks.split(100):
        logits = torch.zeros((chunk.shape[0], num_classes, *chunk.shape[1:]))
        logits[:, 0] = 1.0
        metrics.update(logits, chunk)
    result = metrics.compute()
    del result["loss"], result["loss_foreground"]
    return result


def format_metrics(m):
    """"acc 0.9123 acc_foreground 0.5012 ...": the metrics of METRIC_NAMES that `m` holds."""
    return " ".join(f"{k} {m[k]:.4f}" for k in METRIC_NAMES if k in m)
