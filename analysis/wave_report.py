"""The waves of trained models, measured object by object (analysis/waves.py), summarised per
run, drawn, and played (analysis/sound.py).

The sequence measured is the one each model's readout sees (model(x, return_sequence=True)):
the NWM's positions y_1..y_T, the ConvLSTM's inputs u_1..u_T = MLP(h_t). An object is the
set of pixels of one class in the ground-truth mask. Each object also records how much of
it the model segments (recall: the fraction of its pixels predicted as its class), so the
summaries can keep to the objects a model gets right (WELL_SEGMENTED).

    rows, spectra, example = measure_run("results/runs/tetrominoes/nwm-linear-T100-h2-seed0", n=32)
    outputs = report(["results/runs/tetrominoes/nwm-linear-T100-h2-seed0", ...], figures, tables, sounds)
"""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scipy.signal
import torch
from tqdm import tqdm

import plotting
import pretrained
import runs
from analysis import sound, waves
from analysis.trained import check_data
from dataset_config import load_dataset, read_metadata
from models import is_recurrent

WELL_SEGMENTED = 0.8  # object recall from which an object counts as segmented well
MEASURES = ("speed", "directionality", "local_directionality", "travelling", "dominant_frequency")


@torch.no_grad()
def measure_run(run_dir, split="test", n=32, data_root=None, batch_size=4, trim=0.1, progress=False):
    """Measures the first `n` images of a split of the run's dataset (a progress bar if `progress`). Returns
    (rows: one dict per object, with waves.object_measures' keys plus run, model, image,
    class and recall; spectra: class name -> list of (freqs, power)
    per object; example: image 0's input, mask, sequence and the number of classes)."""
    model = pretrained.load(run_dir)  # the class names the run recorded: imported datasets too
    config, class_names = model.config, model.class_names
    images, masks = load_dataset(config["dataset"], split, data_root, limit=n)
    rows, spectra, example = [], {}, None
    bar = tqdm(total=len(images), desc=config["run_name"], unit="image", disable=not progress, leave=False)
    for start in range(0, len(images), batch_size):
        logits, sequences = model(images[start:start + batch_size], return_sequence=True)
        for offset, (prediction, sequence) in enumerate(zip(logits.argmax(1).numpy(), sequences.numpy())):
            index, mask = start + offset, masks[start + offset].numpy()
            if example is None:
                # a copy: a view would keep the whole batch's sequences (420 MB of Multi-MNIST) alive
                example = dict(image=images[index], mask=mask, sequence=sequence.copy(), num_classes=len(class_names))
            for row in waves.object_measures(sequence, mask, trim):
                region = mask == row["label"]
                name = class_names[row["label"]]
                row.update(run=config["run_name"], model=config["model"], image=index, **{"class": name},
                           recall=float((prediction[region] == row["label"]).mean()))
                rows.append(row)
                spectra.setdefault(name, []).append(waves.power_spectrum(sequence, region))
            bar.update()
    bar.close()
    return rows, {name: spectra[name] for name in class_names if name in spectra}, example


def summary(rows):
    """Per run, over all objects and over the well-segmented ones: the number of objects and
    the median of each measure."""
    frame = pd.DataFrame(rows)
    parts = [frame.assign(objects="all"), frame[frame["recall"] >= WELL_SEGMENTED].assign(objects="segmented")]
    table = pd.concat(parts).groupby(["run", "objects"], sort=False)
    return table[list(MEASURES)].median().join(table.size().rename("n")).reset_index()


def class_frequencies(rows):
    """Per run and class: the median dominant frequency (cycles/step) of its objects and their number."""
    frame = pd.DataFrame(rows)
    frame["run"] = pd.Categorical(frame["run"], frame["run"].unique())  # runs in the order given
    table = frame.groupby(["run", "label", "class"], observed=True)["dominant_frequency"]
    return table.median().to_frame().join(table.size().rename("n")).reset_index()


def class_sounds(spectra, out_dir, prefix):
    """One WAV per class, <out_dir>/<prefix>-<class>.wav, from the mean power spectrum of its
    objects (sound.spectrum_to_audio). Returns {class: path}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, parts in spectra.items():
        freqs = parts[0][0]
        audio = sound.spectrum_to_audio(freqs, np.mean([power for _, power in parts], axis=0))
        paths[name] = sound.write_wav(out_dir / f"{prefix}-{name.replace('/', '-')}.wav", audio)
    return paths


def wave_maps(sequence, channel=0, trim=0.1):
    """Per-pixel maps of one channel of a T x C x H x W sequence, over the steps left after
    trimming: the middle frame, its phase, the median |frequency| and speed over time, the
    mean propagation vector and the median local directionality."""
    series = sequence[:, channel]
    a = waves.trimmed_analytic_signal(series, trim)
    cut = (len(series) - len(a)) // 2  # steps trimmed at each end
    gradient, frequency = waves.phase_gradient(a), np.abs(waves.instantaneous_frequency(a))
    uy, ux = waves.wave_direction(a, gradient)
    middle = len(series) // 2
    return dict(frame=series[middle], phase=waves.instantaneous_phase(a[middle - cut]),
                frequency=np.median(frequency, axis=0),
                speed=np.median(waves.wave_speed(a, gradient, frequency), axis=0), direction=(uy.mean(0), ux.mean(0)),
                local_directionality=np.median(waves.local_directionality(a, direction=(uy, ux)), axis=0),
                middle=middle)


def maps_figure(examples, num_classes, channel=0, arrow_step=4):
    """One row per model (examples: label -> measure_run's example): input, true mask, hidden
    frame, phase, frequency, speed with the propagation arrows, local directionality."""
    titles = ["input", "true mask", "hidden (middle step)", "phase (rad)", "|frequency| (cycles/step)",
              "speed (px/step), direction", "local directionality"]
    fig, axes = plt.subplots(len(examples), len(titles), figsize=(2.2 * len(titles), 2.4 * len(examples)),
                             squeeze=False)
    for row, (label, example) in zip(axes, examples.items()):
        maps = wave_maps(example["sequence"], channel)
        plotting.show_image(row[0], example["image"])
        plotting.show_mask(row[1], example["mask"], num_classes)
        limit = float(np.abs(maps["frame"]).max()) or 1.0
        plotting.show_wave(row[2], maps["frame"], limit)
        shown = [row[3].imshow(maps["phase"], cmap="twilight", vmin=-np.pi, vmax=np.pi),
                 row[4].imshow(maps["frequency"], cmap="magma"),
                 row[5].imshow(maps["speed"], cmap="viridis", norm=matplotlib.colors.LogNorm(0.01, 10)),
                 row[6].imshow(maps["local_directionality"], cmap="gray", vmin=0, vmax=1)]
        H, W = maps["frame"].shape
        yy, xx = np.mgrid[0:H:arrow_step, 0:W:arrow_step]
        uy, ux = (d[::arrow_step, ::arrow_step] for d in maps["direction"])
        row[5].quiver(xx, yy, ux, -uy, color="white", scale=25, width=0.006)  # image rows grow downward
        for ax, image in zip(row[3:], shown):
            fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
        for ax, title in zip(row, [f"{label}: input", *titles[1:]]):
            ax.set_title(title, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    return fig


def comparison_figure(rows, labels):
    """The per-object measures of each run side by side (labels: run name -> short label),
    the well-segmented objects in colour over all objects in grey."""
    frame = pd.DataFrame(rows)
    names = ["median speed (px/step)", "directionality (object)", "local directionality (5x5)",
             "travelling index", "dominant frequency (cycles/step)"]
    fig, axes = plt.subplots(1, len(MEASURES), figsize=(3.2 * len(MEASURES), 3.2))
    for ax, measure, name in zip(axes, MEASURES, names):
        for i, (run, label) in enumerate(labels.items()):
            objects = frame[frame["run"] == run]
            good = objects[objects["recall"] >= WELL_SEGMENTED]
            jitter = np.random.default_rng(i).uniform(-0.15, 0.15, len(objects))
            ax.scatter(i + jitter, objects[measure], s=6, color="0.75")
            ax.scatter(i + jitter[(objects["recall"] >= WELL_SEGMENTED).to_numpy()], good[measure], s=6,
                       color=f"C{i}")
            ax.hlines(objects[measure].median(), i - 0.3, i + 0.3, color="black")
        ax.set_xticks(range(len(labels)), list(labels.values()), fontsize=7)
        ax.set_title(name, fontsize=9)
        if measure in ("speed", "dominant_frequency"):
            ax.set_yscale("log")
    fig.tight_layout()
    return fig


def spectrogram_figure(paths, rate=sound.RATE, max_hz=1500, dynamic_range=60):
    """The WAV files (paths: label -> path) one after another in one spectrogram, its colours
    spanning the top `dynamic_range` dB, and beside it each one's mean spectrum (Welch)."""
    audios = [np.frombuffer(Path(p).read_bytes()[44:], "<i2") / 32768 for p in paths.values()]  # after the header
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 2.8), gridspec_kw=dict(width_ratios=(2, 1)))
    *_, image = left.specgram(np.concatenate(audios), NFFT=1024, Fs=rate, noverlap=512, cmap="magma")
    top = image.get_clim()[1]
    image.set_clim(top - dynamic_range, top)
    seconds = np.cumsum([0] + [len(a) / rate for a in audios])
    left.set_xticks((seconds[:-1] + seconds[1:]) / 2, list(paths), fontsize=8)
    left.set_ylim(0, max_hz)
    left.set_ylabel("Hz")
    for i, (label, audio) in enumerate(zip(paths, audios)):
        hz, power = scipy.signal.welch(audio, rate, nperseg=2048)
        right.semilogy(hz, power, color=f"C{i}", lw=1, label=label)
    right.set_xlim(0, max_hz)
    right.set_xlabel(f"Hz (= {sound.HZ_PER_CYCLE_PER_STEP:,.0f} x cycles/step)", fontsize=8)
    right.set_title("mean spectrum", fontsize=9)
    right.legend(fontsize=6)
    fig.tight_layout()
    return fig


def report(run_dirs, figures, tables, sounds, n=32, split="test", data_root=None, progress=False):
    """measure_run on each run (the first `n` images of the split, all where it holds fewer), then
    writes <tables>/waves.csv (summary), waves_classes.csv (class_frequencies) and
    waves_objects.csv (every object); <figures>/waves_comparison.png,
    and from the first run given of each dataset and model, <figures>/waves_maps_<dataset>.png
    (one row per model), its class sounds <sounds>/<dataset>_<model>-<class>.wav and their
    spectrograms <figures>/waves_spectrogram_<dataset>_<model>.png. A progress bar per run if `progress`,
    else a line per run. Before any measuring, ValueError for two runs of one name (config.json's run_name,
    which keys the rows: another folder's copy, or another checkpoint of one run). Returns
    dict(summary, classes, rows, sounds: (dataset, model) -> {class: path}, figures: [paths])."""
    counts, configs, folders = {}, {}, {}  # per run: images measured (n, or all of a smaller split), config, directory
    named = {}  # run name -> the run given under it: rows, tables and figure are keyed by the run's name
    for run_dir in run_dirs:  # every run's files and data first: a missing one stops before minutes of measuring
        folders[run_dir], _ = pretrained.resolve(run_dir)  # a run directory, a file in one or a shipped name
        config = configs[run_dir] = runs.load_json(folders[run_dir] / runs.CONFIG)
        if not is_recurrent(config["model"]):
            raise ValueError(f"{run_dir} holds a {config['model']}, which has no hidden state over time; "
                             f"measure runs of nwm, lstm, gru or rnn")
        check_data(config, folders[run_dir], split, data_root)
        if config["run_name"] in named:
            raise ValueError(f"{named[config['run_name']]} and {run_dir} are both run {config['run_name']}: their "
                             f"objects would be pooled in one row of waves.csv; measure them in two calls with "
                             f"other --tables, --figures and --sounds")
        named[config["run_name"]] = run_dir
        counts[run_dir] = min(n, read_metadata(config["dataset"], data_root)["split_sizes"][split])
    rows, examples, sound_paths, figure_paths, labels = [], {}, {}, [], {}
    for run_dir in run_dirs:
        run_rows, spectra, example = measure_run(run_dir, split, counts[run_dir], data_root, progress=progress)
        if not progress:
            print(f"{run_dir}: {counts[run_dir]} {split} images measured", flush=True)
        if not run_rows:  # e.g. a dataset whose first images are background only
            print(f"{run_dir}: no object in the first {counts[run_dir]} {split} images; skipped")
            continue
        config = configs[run_dir]
        dataset, model = config["dataset"], config["model"]
        labels[config["run_name"]] = f"{model.upper()} seed {config['seed']}\n{dataset}"
        rows += run_rows
        if (dataset, model) in sound_paths:
            continue
        examples.setdefault(dataset, {})[f"{model.upper()} ({folders[run_dir].name})"] = example
        sound_paths[dataset, model] = class_sounds(spectra, sounds, f"{dataset}_{model}")
        figure_paths += plotting.save_figure(spectrogram_figure(sound_paths[dataset, model]),
                                             f"waves_spectrogram_{dataset}_{model}", figures, dpi=72)
    for dataset, by_model in examples.items():
        num_classes = next(iter(by_model.values()))["num_classes"]
        figure_paths += plotting.save_figure(maps_figure(by_model, num_classes),
                                             f"waves_maps_{dataset}", figures)
    if not rows:
        raise ValueError(f"no object in the {split} images measured of {', '.join(map(str, run_dirs))}")
    figure_paths += plotting.save_figure(comparison_figure(rows, labels), "waves_comparison", figures)
    tables = Path(tables)
    tables.mkdir(parents=True, exist_ok=True)
    table, classes = summary(rows), class_frequencies(rows)
    table.to_csv(tables / "waves.csv", index=False, float_format="%.5g")
    classes.to_csv(tables / "waves_classes.csv", index=False, float_format="%.5g")
    pd.DataFrame(rows).to_csv(tables / "waves_objects.csv", index=False, float_format="%.5g")
    return dict(summary=table, classes=classes, rows=rows, sounds=sound_paths, figures=figure_paths)
