"""torch.hub entry points: the paper's models, untrained or with the weights shipped in results/runs.

    model = torch.hub.load("<owner>/<repo>", "nwm", dataset="tetrominoes", pretrained=True)
    model = torch.hub.load("path/to/clone", "nwm", source="local", dataset="polygons", pretrained=True)
    model = torch.hub.load("path/to/clone", "unet", source="local", dataset="multi_mnist", width=3)

A pretrained model comes in eval mode, with `model.class_names` (index = class id) and
`model.config` (its run's settings) attached; an untrained one has the paper's settings
for the dataset (configs.py), which keywords override; a keyword out of its range (T=-5, dt=0)
is refused with a ValueError that names the range (models.build_model; train.py's flags take
the same ranges). Shipped weights: pretrained.SHIPPED (see that module for what each was
trained on).
"""
import pretrained as _pretrained
from configs import model_config as _model_config
from dataset_config import DATASETS as _DATASETS
from dataset_config import get_info as _get_info
from models import build_model as _build_model

dependencies = ["torch", "numpy", "tqdm"]


def _entry(model, dataset, pretrained, settings):
    if not isinstance(pretrained, bool):
        raise ValueError(f"pretrained must be True or False, got {pretrained!r}")
    if not isinstance(dataset, str) or dataset not in _DATASETS:
        shipped = f"; trained models are shipped for {', '.join(_pretrained.SHIPPED)}" if pretrained else ""
        raise ValueError(f"unknown dataset {dataset!r}; datasets: {', '.join(_DATASETS)}{shipped}")
    if pretrained:
        name = f"{dataset}/{model}"
        if name not in _pretrained.SHIPPED:
            raise ValueError(f"no trained {model} on {dataset} is shipped; shipped: {', '.join(_pretrained.SHIPPED)} "
                             f"(or train one: python train.py --dataset {dataset} --model {model})")
        if settings:
            raise ValueError(f"a pretrained model has its run's settings; {', '.join(settings)} cannot change")
        return _pretrained.load(name)
    net = _build_model(model, **_model_config(dataset, model, **settings))
    info = _get_info(dataset)
    net.class_names, net.image_size = info.class_names, info.image_size
    return net


def nwm(dataset="tetrominoes", pretrained=False, **settings):
    """Neural Wave Machine (docs/methods.md, "Models")."""
    return _entry("nwm", dataset, pretrained, settings)


def lstm(dataset="tetrominoes", pretrained=False, **settings):
    """ConvLSTM baseline, T = 20."""
    return _entry("lstm", dataset, pretrained, settings)


def cnn(dataset="tetrominoes", pretrained=False, **settings):
    """Feed-forward CNN baseline; `depth` 8 unless given (pretrained=True: the shipped one, at its run's depth)."""
    return _entry("cnn", dataset, pretrained, settings)


def unet(dataset="multi_mnist", pretrained=False, **settings):
    """U-Net baseline; `width` 4 unless given."""
    return _entry("unet", dataset, pretrained, settings)
