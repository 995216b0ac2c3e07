"""Looking inside a trained model: its hidden sequence, what its readout makes of it, its predictions."""
import torch
from tqdm import tqdm

import pretrained
import runs
from dataset_config import fingerprint, load_dataset, read_metadata
from metrics import confusion_matrix, iou_from_confusion


def load_trained(sources, split="test", data_root=None):
    """The models of `sources` (run directories, checkpoints in them, or shipped names: pretrained.load),
    each with `source` attached, after checking that the data root holds the split of each one's dataset
    and that it is the data the run was trained on (as produce_scores.py checks): every model and every
    dataset is read before any analysis starts. ValueError, or a DatasetError, saying what to do."""
    models = []
    for source in sources:
        model = pretrained.load(str(source))
        check_data(model.config, source, split, data_root)
        model.source = source
        models.append(model)
    return models


def check_data(config, source, split="test", data_root=None):
    """That the data root holds `split` of the dataset of run `config` (from `source`), and that it is the
    data the run was trained on, where the run recorded it; ValueError or a DatasetError saying what to do."""
    load_dataset(config["dataset"], split, data_root, limit=1)
    trained_on = (config.get("data") or {}).get("sha256")
    if trained_on is not None and fingerprint(read_metadata(config["dataset"], data_root))["sha256"] != trained_on:
        raise ValueError(f"{source} was trained on other {config['dataset']} data ({runs.data_label(config)}, "
                         f"sha256 {trained_on[:12]}) than the data root holds; pass --data-root with the data it "
                         f"was trained on, or re-create that data")


@torch.no_grad()
def hidden_sequence(model, image):
    """(logits K x H x W, hidden sequence T x C x H x W) of a recurrent model for one C x H x W image."""
    logits, sequence = model(image[None], return_sequence=True)
    return logits[0], sequence[0]


@torch.no_grad()
def temporal_feature_maps(model, sequence):
    """What the readout makes of each pixel's time series: H x W x C x K.

    For the linear readout the projection of the sequence on the learned T -> K basis,
    for fft the magnitude of each frequency bin (readouts.TemporalReadout.features).
    sequence: T x C x H x W.
    """
    features = model.readout.features(sequence[None])[0]  # H x W x (C * K)
    H, W, _ = features.shape
    return features.reshape(H, W, model.readout.channels, model.readout.K)


@torch.no_grad()
def predict(model, images, batch_size=32, progress=False, desc="predict"):
    """Predicted class maps (N x H x W) for N x C x H x W images; a progress bar if `progress`."""
    chunks = tqdm(images.split(batch_size), desc=desc, unit="batch", disable=not progress, leave=False)
    return torch.cat([model(chunk).argmax(1) for chunk in chunks])


def confusion_and_iou(predictions, masks, num_classes):
    """(confusion matrix, rows = true class; per-class IoU, NaN for absent classes) as numpy."""
    confusion = confusion_matrix(predictions, masks, num_classes)
    return confusion.numpy(), iou_from_confusion(confusion).numpy()
