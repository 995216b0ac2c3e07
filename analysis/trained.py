"""Looking inside a trained model: its hidden sequence, what its readout makes of it, its predictions."""
import torch

from metrics import confusion_matrix, iou_from_confusion


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
def predict(model, images, batch_size=32):
    """Predicted class maps (N x H x W) for N x C x H x W images."""
    return torch.cat([model(chunk).argmax(1) for chunk in images.split(batch_size)])


def confusion_and_iou(predictions, masks, num_classes):
    """(confusion matrix, rows = true class; per-class IoU, NaN for absent classes) as numpy."""
    confusion = confusion_matrix(predictions, masks, num_classes)
    return confusion.numpy(), iou_from_confusion(confusion).numpy()
