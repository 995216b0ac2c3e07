"""torch.hub entry points: the paper's models, untrained or with the weights shipped in results/runs.

    model = torch.hub.load("<owner>/<repo>", "nwm", dataset="tetrominoes", pretrained=True)
    model = torch.hub.load("path/to/clone", "nwm", source="local", dataset="polygons", pretrained=True)
    model = torch.hub.load("path/to/clone", "unet", source="local", dataset="multi_mnist", width=3)

A pretrained model comes in eval mode, with `model.class_names` (index = class id) and
`model.config` (its run's settings) attached; an untrained one has the paper's settings
for the dataset (configs.py), which keywords override. Shipped weights: pretrained.SHIPPED
(see that module for what each was trained on).
"""
import pretrained as _pretrained
from configs import model_config as _model_config
from dataset_config import get_info as _get_info
from models import build_model as _build_model

dependencies = ["torch", "numpy"]


def _entry(model, dataset, pretrained, settings):
    if pretrained:
        name = f"{dataset}/{model}"
        if name not in _pretrained.SHIPPED:
            raise ValueError(f"no trained {model} on {dataset} is shipped; shipped: {', '.join(_pretrained.SHIPPED)} "
                             f"(or train one: python train.py --dataset {dataset} --model {model})")
        if settings:
            raise ValueError(f"a pretrained model has its run's settings; {', '.join(settings)} cannot change")
        return _pretrained.load(name)
    net = _build_model(model, **_model_config(dataset, model, **settings))
    net.class_names = _get_info(dataset).class_names
    return net


def nwm(dataset="tetrominoes", pretrained=False, **settings):
    """Neural Wave Machine (docs/methods.md, "Models")."""
    return _entry("nwm", dataset, pretrained, settings)


def lstm(dataset="tetrominoes", pretrained=False, **settings):
    """ConvLSTM baseline, T = 20."""
    return _entry("lstm", dataset, pretrained, settings)


def cnn(dataset="tetrominoes", pretrained=False, **settings):
    """Feed-forward CNN baseline; `depth` 8 unless given (the shipped one, pretrained=True, has depth 2)."""
    return _entry("cnn", dataset, pretrained, settings)


def unet(dataset="multi_mnist", pretrained=False, **settings):
    """U-Net baseline; `width` 4 unless given."""
    return _entry("unet", dataset, pretrained, settings)
