"""Train one model on one dataset: the paper's recipe (SPEC section 4), one run directory.

    python train.py --quickstart                       # minutes on a CPU: data + a small NWM run
    python train.py --dataset tetrominoes --model nwm --readout linear --seed 0
    python train.py --dataset multi_mnist --model unet --width 4
    python train.py --help                             # every setting, with the paper's values

Adam, cross-entropy over all pixels, validation after every epoch; the model with the
best validation loss (improving by more than --tolerance) is kept in checkpoint.pt, and
training stops early once --min-epochs have run and --patience epochs brought no
improvement. The kept model is then evaluated on the test split. What a run writes is
described in runs.py. Run the same command again to resume a killed run.
"""
import argparse
import csv
import io
import json
import math
import platform
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import runs
from dataset_config import (DATASETS, DatasetError, DatasetNotFoundError, fingerprint, get_info, load_dataset,
                            read_metadata, resolve_data_root)
from engine import NonFiniteLossError, bf16_supported, evaluate, train_one_epoch, tune_cpu_allocator
from metrics import METRIC_NAMES, background_only_metrics
from models import MODEL_NAMES, READOUTS, build_model, count_parameters, is_recurrent, model_config_keys

# What --quickstart changes: a CPU-sized Tetrominoes NWM run (see README, "Quickstart").
QUICKSTART = dict(dataset="tetrominoes", model="nwm", readout="linear", train_size=1000, val_size=250,
                  batch_size=16, epochs=10, min_epochs=10, readout_width=64, run_name="quickstart")

# Settings that do not change what is trained, so a run may resume with other values.
NOT_RUN_DEFINING = {"device", "data_root", "runs_root", "run_name", "resume", "restart",
                    "progress", "compile", "amp", "cpu_allocator", "bptt_segment", "fused", "quickstart"}
AUTO_SEGMENT, AUTO_SEGMENT_BYTES = 10, 2**28


def auto_or_int(text):
    return text if text == "auto" else int(text)


def build_parser():
    p = argparse.ArgumentParser(
        description="Train one model on one dataset with the paper's recipe and write a run directory "
                    "(config.json, metrics.csv, checkpoint.pt, test_metrics.json). Defaults are the paper's.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="tetrominoes", choices=sorted(DATASETS), help="dataset to train on")
    g.add_argument("--data-root", default=None,
                   help="folder holding the datasets (default: $WAVES_DATA_ROOT, else ./data)")
    g.add_argument("--train-size", type=int, default=None,
                   help="train on the first N training images only (default: all)")
    g.add_argument("--val-size", type=int, default=None,
                   help="validate on the first N validation images only (default: all; the test split is "
                        "always used whole)")

    g = p.add_argument_group("model (SPEC section 2)")
    g.add_argument("--model", default="nwm", choices=MODEL_NAMES,
                   help="nwm: wave model; lstm/gru/rnn: conv recurrent baselines; cnn: local feed-forward; "
                        "unet: non-local baseline")
    g.add_argument("--readout", default="linear", choices=READOUTS,
                   help="temporal readout of the recurrent models (the CNN always uses its linear head)")
    g.add_argument("--T", type=int, default=None,
                   help="recurrent steps; the CNN makes T/2-1 features per channel (default: 20 for "
                        "lstm/gru/rnn, else 100)")
    g.add_argument("--dt", type=float, default=0.1, help="NWM step size")
    g.add_argument("--c-mid", type=int, default=16, help="encoder width")
    g.add_argument("--hidden-channels", type=int, default=None,
                   help="hidden (wave) channels (default: 16 on multi_mnist and polygons, else 2)")
    g.add_argument("--readout-width", type=int, default=None,
                   help="units per hidden layer of the per-pixel MLP head (default: 32 for the NWM on "
                        "multi_mnist and polygons, else 256)")
    g.add_argument("--readout-depth", type=int, default=None,
                   help="hidden layers of the MLP head (default: 5 for the NWM on multi_mnist and polygons, else 3)")
    g.add_argument("--depth", type=int, default=8, help="CNN depth: number of 3x3 convs (paper: 2-32)")
    g.add_argument("--width", type=int, default=4, help="U-Net base width (paper: 2-5)")

    g = p.add_argument_group("training (SPEC section 4)")
    g.add_argument("--epochs", type=int, default=300, help="maximum number of epochs")
    g.add_argument("--min-epochs", type=int, default=250, help="no early stopping before this many epochs")
    g.add_argument("--patience", type=int, default=300,
                   help="stop after this many epochs without improvement (once --min-epochs have run)")
    g.add_argument("--tolerance", type=float, default=0.001,
                   help="the validation loss must drop by more than this to count as an improvement")
    g.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    g.add_argument("--batch-size", type=int, default=64, help="images per batch (evaluation too)")
    g.add_argument("--seed", type=int, default=0, help="seeds the initialisation and the batch order")
    g.add_argument("--max-minutes", type=float, default=None,
                   help="a time budget: stop after the epoch in which the training time (summed over "
                        "epochs, across resumes) passes this many minutes, then test the kept checkpoint "
                        "as usual; test_metrics.json records the epochs run (default: no budget)")

    g = p.add_argument_group("speed (none of these changes the mathematics)")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (cuda when available)")
    g.add_argument("--amp", default="auto", choices=["auto", "on", "off"],
                   help="bfloat16 autocast for the convolutions and the readout head (recurrences stay "
                        "float32); auto: on where bfloat16 is fast (CUDA, CPUs with AMX/AVX512-BF16)")
    g.add_argument("--bptt-segment", default="auto", type=auto_or_int,
                   help="recompute the recurrence in segments of this many steps during backpropagation "
                        "instead of storing every step (saves memory, costs one more forward pass of the "
                        f"recurrence); 0 stores all; auto: {AUTO_SEGMENT} when a batch's hidden sequence "
                        f"would exceed {AUTO_SEGMENT_BYTES // 2**20} MiB, else 0")
    g.add_argument("--no-fused", dest="fused", action="store_false",
                   help="run the NWM recurrence through autograd instead of its hand-written forward and "
                        "backward pass (models/nwm_fused.py; same numbers, faster, less memory)")
    g.add_argument("--compile", default="auto", choices=["auto", "on", "off"],
                   help="torch.compile the recurrent step (the whole model for cnn/unet); auto: on for CUDA")
    g.add_argument("--cpu-allocator", default="tuned", choices=["tuned", "system"],
                   help="tuned: keep freed memory for reuse instead of returning it to the OS after "
                        "every tensor (glibc; much faster CPU steps, see engine.tune_cpu_allocator)")

    g = p.add_argument_group("run directory")
    g.add_argument("--runs-root", default=None, help="where run directories go (default: $WAVES_RUNS_ROOT, else ./runs)")
    g.add_argument("--run-name", default=None,
                   help="run directory under the runs root (default: derived from the settings, "
                        "e.g. tetrominoes/nwm-linear-T100-h2-seed0)")
    g.add_argument("--resume", metavar="RUN_DIR", default=None,
                   help="resume the run in RUN_DIR with its stored settings (running the same command "
                        "again resumes too)")
    g.add_argument("--restart", action="store_true", help="delete an existing run of the same name and start over")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    g.add_argument("--quickstart", action="store_true",
                   help="a CPU-sized demo: creates Tetrominoes if missing and trains a small NWM in "
                        f"minutes ({', '.join(f'{k}={v}' for k, v in QUICKSTART.items())}); "
                        "explicit flags still win")
    return p


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quickstart:  # the preset replaces the defaults, explicit flags still win
        parser.set_defaults(**QUICKSTART)
        args = parser.parse_args(argv)
    if args.resume:
        stored = runs.load_json(Path(args.resume) / runs.CONFIG)
        parser.set_defaults(**{k: v for k, v in stored.items() if k in vars(args)})
        args = parser.parse_args(argv)
        args.run_name = stored["run_name"]
        args.runs_root = str(Path(args.resume).resolve().parents[len(Path(stored["run_name"]).parts) - 1])
    fill_model_defaults(args)
    return parser, args


def auto_bptt_segment(model, batch_size, T, hidden_channels, image_size):
    """--bptt-segment auto: recompute in segments when a batch's float32 hidden sequence is large."""
    H, W = image_size
    sequence_bytes = batch_size * T * hidden_channels * H * W * 4
    return AUTO_SEGMENT if is_recurrent(model) and sequence_bytes > AUTO_SEGMENT_BYTES else 0


def fill_model_defaults(args):
    """The paper's per-dataset and per-model values for settings left unset."""
    wide = args.dataset in ("multi_mnist", "polygons")
    if args.T is None:
        args.T = 20 if args.model in ("lstm", "gru", "rnn") else 100
    if args.hidden_channels is None:
        args.hidden_channels = 16 if wide else 2
    small_head = wide and args.model == "nwm"
    if args.readout_width is None:
        args.readout_width = 32 if small_head else 256
    if args.readout_depth is None:
        args.readout_depth = 5 if small_head else 3
    if not is_recurrent(args.model):
        args.readout = None  # feed-forward models have no temporal readout
    if args.bptt_segment == "auto":
        args.bptt_segment = auto_bptt_segment(args.model, args.batch_size, args.T, args.hidden_channels,
                                              get_info(args.dataset).image_size)

    if args.run_name is None:
        args.run_name = default_run_name(args)


def default_run_name(args):
    if args.model == "cnn":
        variant = f"depth{args.depth}"
    elif args.model == "unet":
        variant = f"width{args.width}"
    else:
        variant = f"{args.readout}-T{args.T}-h{args.hidden_channels}"
    name = f"{args.dataset}/{args.model}-{variant}"
    if args.train_size is not None:
        name += f"-n{args.train_size}"
    return f"{name}-seed{args.seed}"


def check_settings(parser, args):
    """Refuse impossible settings before any work starts."""
    positive = ["T", "c_mid", "hidden_channels", "readout_width", "depth", "width", "epochs", "batch_size"]
    for name in positive:
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.readout_depth < 0 or args.min_epochs < 0 or args.patience < 1 or args.bptt_segment < 0:
        parser.error("--readout-depth, --min-epochs and --bptt-segment must be >= 0 and --patience >= 1")
    if not (args.lr > 0 and args.dt > 0 and args.tolerance >= 0):
        parser.error("--lr and --dt must be positive and --tolerance non-negative")
    if args.max_minutes is not None and args.max_minutes <= 0:
        parser.error(f"--max-minutes must be positive, got {args.max_minutes}")
    if args.model == "cnn" and args.T < 4:
        parser.error(f"the CNN makes T/2 - 1 features per channel: --T must be at least 4, got {args.T}")
    if args.model == "unet" and min(get_info(args.dataset).image_size) < 16:
        parser.error("the U-Net pools four times: images must be at least 16x16")


def pick_device(parser, name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        parser.error(f"unknown --device {name!r}; use cpu, cuda, cuda:N or auto")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {name} asked for, but this PyTorch sees no CUDA device; use --device cpu")
    return device


def model_config(args):
    info = get_info(args.dataset)
    config = dict(in_channels=info.channels, num_classes=info.num_classes)
    for key in model_config_keys(args.model):
        if key not in config:
            config[key] = getattr(args, key)
    return config


def ensure_quickstart_data(args):
    """--quickstart creates Tetrominoes when missing (normal runs refuse, see load_dataset)."""
    if not args.quickstart:
        return
    try:
        read_metadata(args.dataset, args.data_root)
    except DatasetNotFoundError:
        print(f"creating the Tetrominoes dataset under {resolve_data_root(args.data_root)} (under a minute)")
        command = [sys.executable, str(Path(__file__).resolve().parent / "data_scripts" / "create_tetrominoes.py")]
        subprocess.run(command + ([] if args.data_root is None else ["--data-root", str(args.data_root)]), check=True)


def load_splits(parser, args, device):
    try:
        data = {"train": load_dataset(args.dataset, "train", args.data_root, args.train_size),
                "val": load_dataset(args.dataset, "val", args.data_root, args.val_size),
                "test": load_dataset(args.dataset, "test", args.data_root)}
        data_fingerprint = fingerprint(read_metadata(args.dataset, args.data_root))
    except DatasetError as e:
        parser.error(str(e))
    # one copy to the device; batches are then drawn by index
    return {split: (x.to(device), y.to(device)) for split, (x, y) in data.items()}, data_fingerprint


def run_settings(args):
    return {k: v for k, v in vars(args).items() if k not in NOT_RUN_DEFINING}


def prepare_run_dir(parser, args, data_fingerprint):
    """The run directory, and whether the run in it is resumed. Exits if it is finished."""
    run_dir = runs.resolve_runs_root(args.runs_root) / args.run_name
    if args.restart and run_dir.exists():
        shutil.rmtree(run_dir)
    if (run_dir / runs.CONFIG).exists():
        stored = runs.load_json(run_dir / runs.CONFIG)
        differ = {k: (stored.get(k), v) for k, v in run_settings(args).items() if stored.get(k) != v}
        if differ:
            parser.error(f"{run_dir} holds a run with other settings "
                         f"({', '.join(f'{k}: {a} there, {b} now' for k, (a, b) in differ.items())}). "
                         f"Choose another --run-name or --runs-root, or --restart to replace it.")
        stored_data = (stored.get("data") or {}).get("sha256")
        if stored_data != data_fingerprint["sha256"]:
            parser.error(f"{run_dir} was trained on other data (dataset fingerprint {str(stored_data)[:12]} "
                         f"there, {data_fingerprint['sha256'][:12]} now in {resolve_data_root(args.data_root)}). "
                         f"Point --data-root at its data, or choose another --run-name, or --restart.")
    if runs.is_finished(run_dir):
        test = runs.load_json(run_dir / runs.TEST_METRICS)
        print(f"{run_dir} is already finished (test iou_foreground {test['iou_foreground']:.4f}); "
              f"nothing to do. Use --restart to train it again.")
        sys.exit(0)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, (run_dir / runs.LAST).exists()


def write_config(args, run_dir, model, device, amp, data_fingerprint):
    config = dict(vars(args), **model_config(args))
    config.update(
        data=data_fingerprint, num_params=count_parameters(model), device=str(device), amp=amp,
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        versions=dict(python=platform.python_version(), torch=torch.__version__, numpy=np.__version__),
        command=" ".join([Path(sys.executable).name] + sys.argv),
        started=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    runs.save_json(config, run_dir / runs.CONFIG)
    return config


def write_metrics_csv(history, path):
    """The whole history each time, so a resumed run never duplicates or loses rows."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    runs.save_text(buffer.getvalue(), path)


def epoch_row(epoch, train, val, lr, seconds, improved):
    row = {"epoch": epoch}
    for prefix, metrics in (("train", train), ("val", val)):
        row.update({f"{prefix}_{name}": metrics[name] for name in METRIC_NAMES})
    row.update(lr=lr, seconds=round(seconds, 3), best=int(improved))
    return row


def maybe_compile(model, args, device):
    if args.compile == "off" or (args.compile == "auto" and device.type != "cuda"):
        return model
    if model.recurrent:
        # the step is small and repeated T times: one compiled graph, reused, instead of an
        # unrolled graph of all T steps
        model.step = torch.compile(model.step, dynamic=False)
        return model
    return torch.compile(model, dynamic=False)


def format_metrics(m):
    return " ".join(f"{k} {m[k]:.4f}" for k in METRIC_NAMES if k in m)


def main(argv=None):
    parser, args = parse_args(argv)
    if args.cpu_allocator == "tuned":
        tune_cpu_allocator()
    info = get_info(args.dataset)
    check_settings(parser, args)
    device = pick_device(parser, args.device)
    amp = args.amp == "on" or (args.amp == "auto" and bf16_supported(device))
    ensure_quickstart_data(args)
    data, data_fingerprint = load_splits(parser, args, device)
    run_dir, resuming = prepare_run_dir(parser, args, data_fingerprint)

    torch.manual_seed(args.seed)
    model = build_model(args.model, **model_config(args)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    generator = torch.Generator().manual_seed(args.seed)  # batch order, saved for resuming
    state = dict(epoch=0, history=[], best_val_loss=math.inf, best_epoch=None, since_improvement=0)
    if resuming:
        last = torch.load(run_dir / runs.LAST, map_location=device, weights_only=True)
        model.load_state_dict(last["model"])
        optimizer.load_state_dict(last["optimizer"])
        generator.set_state(last["generator"])
        state = last["state"]
        print(f"resuming {run_dir} after epoch {state['epoch']}")
    else:
        write_config(args, run_dir, model, device, amp, data_fingerprint)
    print(f"{args.model} on {args.dataset}: {count_parameters(model):,} parameters, "
          f"{len(data['train'][0]):,} training images, device {device}{', bf16 autocast' if amp else ''} "
          f"-> {run_dir}")
    train_model = maybe_compile(model, args, device)

    stop_reason = "max_epochs"
    epochs = tqdm(range(state["epoch"], args.epochs), initial=state["epoch"], total=args.epochs,
                  desc="epochs", disable=not args.progress, dynamic_ncols=True)
    for epoch in epochs:
        start = time.perf_counter()
        try:
            train = train_one_epoch(train_model, optimizer, *data["train"], info.num_classes, args.batch_size,
                                    generator, amp, args.progress, desc=f"epoch {epoch + 1}")
            val = evaluate(train_model, *data["val"], info.num_classes, args.batch_size, amp)
            if not math.isfinite(val["loss"]):
                raise NonFiniteLossError(f"the validation loss became {val['loss']}")
        except NonFiniteLossError as e:
            kept = (f"the best checkpoint so far (epoch {state['best_epoch']}, val loss "
                    f"{state['best_val_loss']:.4f}) is kept in {run_dir / runs.CHECKPOINT}"
                    if state["best_epoch"] else "no epoch finished, so there is no checkpoint")
            print(f"error: training stopped in epoch {epoch + 1}: {e}; {kept}. "
                  f"Try a lower --lr, or another --seed.", file=sys.stderr)
            sys.exit(1)
        improved = val["loss"] < state["best_val_loss"] - args.tolerance
        if improved:
            state.update(best_val_loss=val["loss"], best_epoch=epoch + 1, since_improvement=0)
            runs.save_torch({"model": model.state_dict(), "epoch": epoch + 1, "val": val}, run_dir / runs.CHECKPOINT)
        else:
            state["since_improvement"] += 1
        state["epoch"] = epoch + 1
        state["history"].append(epoch_row(epoch + 1, train, val, optimizer.param_groups[0]["lr"],
                                          time.perf_counter() - start, improved))
        write_metrics_csv(state["history"], run_dir / runs.METRICS)
        runs.save_torch(dict(model=model.state_dict(), optimizer=optimizer.state_dict(),
                             generator=generator.get_state(), state=state), run_dir / runs.LAST)
        tqdm.write(f"epoch {epoch + 1:3d}/{args.epochs}  train loss {train['loss']:.4f}  val loss {val['loss']:.4f}"
                   f"  val fg IoU {val['iou_foreground']:.4f}  val acc {val['acc']:.4f}"
                   f"  {time.perf_counter() - start:.1f}s{'  *' if improved else ''}")
        if epoch + 1 >= args.min_epochs and state["since_improvement"] >= args.patience:
            stop_reason = "early_stopping"
            break
        if args.max_minutes is not None and sum(r["seconds"] for r in state["history"]) > 60 * args.max_minutes:
            stop_reason = "time_budget"
            break
    epochs.close()

    best = torch.load(run_dir / runs.CHECKPOINT, map_location=device, weights_only=True)
    model.load_state_dict(best["model"])
    test = evaluate(model, *data["test"], info.num_classes, args.batch_size, amp, args.progress, desc="test")
    background = background_only_metrics(data["test"][1].cpu(), info.num_classes)
    test.update(best_epoch=state["best_epoch"], epochs_run=state["epoch"], stop_reason=stop_reason,
                best_val_loss=state["best_val_loss"], background_only=background)
    runs.save_json(test, run_dir / runs.TEST_METRICS)
    print(f"test ({len(data['test'][0])} images, best epoch {state['best_epoch']}):\n"
          f"  model            {format_metrics(test)}\n"
          f"  background only  {format_metrics(background)}\n"
          f"written to {run_dir}")
    if args.quickstart:
        print("This was a CPU-sized demo. The paper's experiment is the same command without --quickstart\n"
              "(10,000 images, 300 epochs, 256-wide head; best on a GPU), e.g.\n"
              "  python train.py --dataset tetrominoes --model nwm --readout linear --seed 0\n"
              "or the whole grid: bash scripts/tetrominoes/nwm.sh (see README).")
    return test


if __name__ == "__main__":
    main()
