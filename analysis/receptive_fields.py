"""Effective receptive fields: how far the input that moves one pixel's logits lies. The
NWM's grows with its number of steps T, the CNN's is bounded by its depth.
"""
import math

import numpy as np
import pandas as pd
import torch

import runs
from analysis.trained import load_trained
from configs import model_config
from dataset_config import load_dataset
from models import build_model

def effective_receptive_field(model, images, pixel):
    """|d logits(pixel) / d input|, summed over classes, input channels and images: H x W.

    images: C x H x W, or N x C x H x W to sum the maps of N images (the ERF of a model
    is usually averaged over inputs: one image can leave a ReLU network's gradient zero
    at a pixel). One backward pass per class, as a sum of the logits before the
    absolute value would let classes cancel. pixel: (row, col).
    """
    model.eval()
    x = images.reshape(-1, *images.shape[-3:]).float().detach().requires_grad_(True)
    logits = model(x)
    row, col = pixel
    erf = torch.zeros(x.shape[-2:])
    num_classes = logits.shape[1]
    for c in range(num_classes):
        (grad,) = torch.autograd.grad(logits[:, c, row, col].sum(), x, retain_graph=c < num_classes - 1)
        erf += grad.abs().sum((0, 1))
    return erf.numpy()


def radius_of_mass(erf_map, pixel, fraction=0.9):
    """The smallest Euclidean distance from `pixel` within which `fraction` of the map's
    total mass lies (NaN for an all-zero map)."""
    erf_map = np.asarray(erf_map, float)
    total = erf_map.sum()
    if total <= 0:
        return math.nan
    rows, cols = np.indices(erf_map.shape)
    distance = np.hypot(rows - pixel[0], cols - pixel[1]).ravel()
    order = np.argsort(distance, kind="stable")
    mass = np.cumsum(erf_map.ravel()[order])
    # against the cumulative sum's own total: sum() may round above it, and fraction 1 would fall off the end
    return float(distance[order][np.searchsorted(mass, fraction * mass[-1])])


def copy_matching_weights(source, target):
    """Copies every parameter and buffer of `source` whose name and shape `target` shares."""
    target_state = target.state_dict()
    shared = {k: v for k, v in source.state_dict().items()
              if k in target_state and target_state[k].shape == v.shape}
    target_state.update(shared)
    target.load_state_dict(target_state)
    return sorted(shared)


def model_variant(name, config, seed=0, source=None, **changes):
    """build_model(name, **config, **changes) initialised from `seed`, in eval mode.

    The same seed gives the same encoders and coupling for every T (they are built before
    the readout); with a trained `source` model its weights are copied wherever the
    shapes match, so an NWM "truncated" to fewer steps keeps its trained encoders and
    coupling (the readout, whose shape depends on T, stays freshly initialised).
    """
    torch.manual_seed(seed)
    model = build_model(name, **{**config, **changes})
    if source is not None:
        copy_matching_weights(source, model)
    return model.eval()


def mean_erf(name, config, images, pixel, seeds, source=None, **changes):
    """The ERF of model_variant(name, ...) averaged over initialisation seeds.

    Each seed's map is scaled to unit mass first, so the average is one of shapes, not
    of gradient scales. A map that is zero everywhere (a ReLU network dead at that
    pixel for every image, common for deep untrained CNNs) is left out and counted.
    Returns (map, number of dead seeds); the map is all zero when every seed was dead.
    """
    maps, dead = [], 0
    for seed in seeds:
        erf = effective_receptive_field(model_variant(name, config, seed, source, **changes), images, pixel)
        if erf.sum() > 0:
            maps.append(erf / erf.sum())
        else:
            dead += 1
    return (np.mean(maps, axis=0) if maps else np.zeros(images.shape[-2:])), dead


def erf_radii(images, pixel, nwm_steps=(5, 10, 20, 50, 100, 200, 400), cnn_depths=(2, 4, 8, 16, 32),
              config=None, seeds=(0, 1, 2), fraction=0.9, nwm_source=None):
    """ERF radius of NWMs run for T steps and of CNNs of each depth, over the same images.

    Returns (DataFrame with columns model, steps_or_depth, radius, bound, dead_seeds;
    dict (model, T or depth) -> mean ERF map). `bound` is the CNN's hard limit, the
    corner of its (2L+1) x (2L+1) window at distance sqrt(2) L; the NWM has none (its
    strict receptive field grows by a pixel per step). `config`: build_model keywords
    shared by both (default: the paper's Tetrominoes settings, with as many input
    channels as the images). `nwm_source`: a trained NWM whose weights the NWMs start from.
    """
    config = {**model_config("tetrominoes", "nwm"), "in_channels": images.shape[-3], **(config or {})}
    rows, maps = [], {}
    for name, values in (("nwm", nwm_steps), ("cnn", cnn_depths)):
        for value in values:
            changes = dict(T=value, fused=False) if name == "nwm" else dict(depth=value)
            source = nwm_source if name == "nwm" else None
            maps[name, value], dead = mean_erf(name, config, images, pixel, seeds, source, **changes)
            radius = radius_of_mass(maps[name, value], pixel, fraction)
            rows.append(dict(model=name, steps_or_depth=value, radius=radius,
                             bound=math.sqrt(2) * value if name == "cnn" else math.nan, dead_seeds=dead))
    return pd.DataFrame(rows), maps


def probe_images(n=4, size=64, channels=3, seed=0):
    """Random images (uniform in [0, 1], N x C x H x W) to probe untrained models' receptive fields."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, size, size, generator=generator)


def trained_radii(sources, n=4, split="test", data_root=None, fraction=0.9):
    """ERF radius of trained runs (run directories, checkpoints in them, or shipped names) at the centre
    pixel of the first `n` images of a split of each run's own dataset: one row per run (run, dataset,
    model, variant, pixel, radius; NaN where the model's logits there do not move with the input, as a
    dead CNN's). Every model and its data are read and checked (analysis.trained.load_trained) before
    any gradient is taken."""
    models = load_trained(sources, split, data_root)
    images = {}
    for model in models:
        dataset = model.config["dataset"]
        if dataset not in images:
            images[dataset] = load_dataset(dataset, split, data_root, limit=n)[0]
    rows = []
    for model in models:
        config = model.config
        x = images[config["dataset"]]
        pixel = (x.shape[-2] // 2, x.shape[-1] // 2)
        erf = effective_receptive_field(model, x, pixel)
        rows.append(dict(run=config["run_name"], dataset=config["dataset"], model=config["model"],
                         variant=runs.variant(config), pixel=pixel, radius=radius_of_mass(erf, pixel, fraction)))
    return pd.DataFrame(rows)
