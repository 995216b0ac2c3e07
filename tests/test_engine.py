"""engine.py: batches drop the last partial one in training only, an epoch trains on whole batches,
and evaluation counts every image once whatever the batch size."""
import pytest
import torch

import engine
from dataset_config import load_dataset
from models import build_model


def test_training_drops_the_last_partial_batch():
    def training_batches(n):
        training = engine.TrainingPass.shuffled(n, 4, torch.Generator().manual_seed(0), 3, "cpu")
        return [training.batch(i) for i in range(training.total)]
    assert [len(b) for b in training_batches(10)] == [4, 4]
    assert [len(b) for b in engine.batches(10, 4)] == [4, 4, 2]
    assert [len(b) for b in training_batches(8)] == [4, 4]
    assert sorted(torch.cat(training_batches(8)).tolist()) == list(range(8))  # shuffled, each image once


def test_an_epoch_trains_on_whole_batches_only(tiny_dataset):
    images, masks = load_dataset("tiny", "train", tiny_dataset, limit=45)
    model = build_model("nwm", in_channels=3, num_classes=3, T=4, c_mid=4, readout_width=8)
    step = engine.TrainStep(model, torch.optim.Adam(model.parameters()), amp=False)
    seen = []
    counting = lambda x, y: (seen.append(len(x)), step(x, y))[1]  # noqa: E731
    counting.model = model
    engine.train_one_epoch(counting, images, masks, 3, 16, torch.Generator().manual_seed(0), progress=False)
    assert seen == [16, 16]  # 45 images: the last 13 are left out of this epoch


def test_evaluation_counts_every_image_once_whatever_the_batch_size(tiny_dataset):
    images, masks = load_dataset("tiny", "test", tiny_dataset)
    torch.manual_seed(0)
    model = build_model("nwm", in_channels=3, num_classes=3, T=4, c_mid=4, readout_width=8).double()
    results = [engine.evaluate(model, images.double(), masks, 3, batch_size) for batch_size in (16, 5, 3)]
    for other in results[1:]:
        for name in ("acc", "acc_foreground", "iou_foreground", "loss", "miou"):
            assert other[name] == pytest.approx(results[0][name], rel=1e-12)
