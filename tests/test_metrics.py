"""Metrics against hand-computed examples (docs/methods.md, "Metrics")."""
import math

import pytest
import torch

from metrics import SegmentationMetrics, background_only_metrics, confusion_matrix, per_image_metrics


def one_hot_logits(pred, num_classes, scale=20.0):
    return torch.nn.functional.one_hot(pred, num_classes).permute(0, 3, 1, 2).float() * scale


def test_per_image_metrics_by_hand():
    masks = torch.tensor([[[0, 1], [2, 2]]])
    pred = torch.tensor([[[0, 1], [1, 2]]])
    m = per_image_metrics(one_hot_logits(pred, 3), masks)
    assert m["acc"].item() == pytest.approx(3 / 4)
    assert m["acc_foreground"].item() == pytest.approx(2 / 3)
    # class 1: |pred & true| = 1, |pred | true| = 2; class 2: 1 and 2 -> 2 / 4
    assert m["iou_foreground"].item() == pytest.approx(0.5)


def test_iou_foreground_counts_wrong_pixels_twice():
    masks = torch.tensor([[[1, 1, 1, 1, 2]]])
    pred = torch.tensor([[[1, 1, 1, 2, 0]]])  # 3 correct, 2 wrong
    m = per_image_metrics(one_hot_logits(pred, 3), masks)
    assert m["iou_foreground"].item() == pytest.approx(3 / (3 + 2 * 2))


def test_losses_by_hand():
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]]]])  # 1 x 2 classes x 1 x 2
    masks = torch.tensor([[[0, 1]]])
    m = per_image_metrics(logits, masks)
    ce_bg = -math.log(math.exp(2) / (math.exp(2) + 1))
    ce_fg = -math.log(math.exp(1) / (math.exp(1) + 1))
    assert m["loss"].item() == pytest.approx((ce_bg + ce_fg) / 2)
    assert m["loss_foreground"].item() == pytest.approx(ce_fg)


def test_images_without_foreground_are_left_out_of_foreground_averages():
    masks = torch.tensor([[[0, 0], [0, 0]], [[1, 1], [0, 0]]])
    pred = torch.tensor([[[0, 0], [0, 0]], [[1, 0], [0, 0]]])
    metrics = SegmentationMetrics(2)
    metrics.update(one_hot_logits(pred, 2), masks)
    result = metrics.compute()
    assert result["acc"] == pytest.approx((1 + 3 / 4) / 2)  # both images count
    assert result["acc_foreground"] == pytest.approx(1 / 2)  # only the second
    assert result["iou_foreground"] == pytest.approx(1 / 3)
    assert math.isfinite(result["loss_foreground"])


def test_mean_iou_from_a_dataset_level_confusion_matrix():
    masks = torch.tensor([[[0, 0, 1, 1]], [[0, 2, 2, 2]]])
    pred = torch.tensor([[[0, 1, 1, 1]], [[0, 2, 2, 0]]])
    conf = confusion_matrix(pred, masks, 4)
    assert conf.tolist() == [[2, 1, 0, 0], [0, 2, 0, 0], [1, 0, 2, 0], [0, 0, 0, 0]]
    metrics = SegmentationMetrics(4)
    metrics.update(one_hot_logits(pred, 4), masks)
    result = metrics.compute()
    # background 2 / (3 + 3 - 2), class 1 2 / 3, class 2 2 / 3; class 3 never occurs
    assert result["iou_per_class"][:3] == pytest.approx([0.5, 2 / 3, 2 / 3])
    assert result["iou_per_class"][3] is None
    assert result["miou"] == pytest.approx((0.5 + 2 / 3 + 2 / 3) / 3)


def test_accumulating_batches_equals_one_pass():
    torch.manual_seed(0)
    logits, masks = torch.randn(6, 3, 5, 5), torch.randint(0, 3, (6, 5, 5))
    whole, parts = SegmentationMetrics(3), SegmentationMetrics(3)
    whole.update(logits, masks)
    for i in range(0, 6, 2):
        parts.update(logits[i:i + 2], masks[i:i + 2])
    a, b = whole.compute(), parts.compute()
    for key in a:
        assert a[key] == pytest.approx(b[key])


def test_background_only_prediction():
    masks = torch.tensor([[[0, 0], [1, 2]], [[0, 0], [0, 0]]])
    result = background_only_metrics(masks, 3)
    assert result["acc"] == pytest.approx((2 / 4 + 1) / 2)
    assert result["acc_foreground"] == 0 and result["iou_foreground"] == 0
    assert "loss" not in result
    assert result["miou"] == pytest.approx((6 / 8 + 0 + 0) / 3)
