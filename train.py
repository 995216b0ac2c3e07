"""Train one model on one dataset: the paper's recipe (docs/methods.md, "Training"), one run directory.

    python train.py --quickstart                       # minutes on a CPU: data + a small NWM run
    python train.py --dataset tetrominoes --model nwm --readout linear --seed 0
    python train.py --dataset multi_mnist --model unet --width 4
    python train.py --help                             # every setting, with the paper's values

Adam, cross-entropy over all pixels, the last partial batch of each epoch dropped,
validation after every epoch; the model with the best validation loss (improving by more
than --tolerance) is kept in checkpoint.pt, and training stops early once --min-epochs
have run and --patience epochs brought no improvement. The kept model is then evaluated
on the test split. What a run writes is described in runs.py.

Run the same command again to resume a run that was stopped (Ctrl-C, SIGTERM, a crash,
--stop-after-minutes, --end-by-minutes); with a larger budget (--epochs, --min-epochs, --patience,
--max-minutes) a finished run continues and is tested again at its new end.
"""
import argparse
import math
import platform
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import pretrained
import runs
import settings
from cli import (ArgumentParser, HelpFormatter, add_data_root, add_device, add_progress, add_runs_root, add_threads,
                 float_at_least, int_at_least, positive_float, shows_bars)
from configs import default_help, paper_settings
from dataset_config import BUILT_IN, DatasetError, DatasetNotFoundError, check_arrays, fingerprint, get_info, \
    load_dataset, read_metadata
from cuda_graphs import make_steps
from engine import CompileError, NonFiniteLossError, TrainingPass, compile_checked, evaluate, set_backends, \
    train_one_epoch
from metrics import background_only_metrics, format_metrics
from models import AT_LEAST, CONFIG_KEYS, MODEL_NAMES, READOUTS, build_model, count_parameters, is_recurrent, \
    model_config_keys
from models.cnn import features_per_channel
from models.common import AUTO_SEGMENT, AUTO_SEGMENT_BYTES, GPU_SHARE, allow_bf16_coupling, auto_bptt_segment
from signals import EXIT_STATUS, Interrupted, StopSignals

# What --quickstart changes: a CPU-sized Tetrominoes NWM run (see README, "Quickstart").
QUICKSTART = dict(dataset="tetrominoes", model="nwm", readout="linear", train_size=1000, val_size=250,
                  batch_size=16, epochs=10, min_epochs=10, readout_width=64, run_name="quickstart")

def auto_or_int(text):
    return text if text == "auto" else int_at_least(AT_LEAST["bptt_segment"])(text)


def model_help(key):
    """A model flag's help, written once: what it sets (models.CONFIG_KEYS) and the paper's value (configs.py)."""
    return f"{CONFIG_KEYS[key]} {default_help(key)}"


def model_flag(group, key, type=None):
    """The flag of model keyword `key`, in the range build_model takes (models.AT_LEAST), unset by default."""
    flag = "--" + key.replace("_", "-")
    group.add_argument(flag, type=type or int_at_least(AT_LEAST[key]), default=None, help=model_help(key))


def build_parser():
    p = ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="tetrominoes",
                   help=f"dataset to train on: {', '.join(BUILT_IN)}, or one imported under the data root "
                        f"(data_scripts/import_folder.py)")
    add_data_root(g)
    g.add_argument("--train-size", type=int_at_least(1), default=None,
                   help="train on the first N training images only (default: all)")
    g.add_argument("--val-size", type=int_at_least(1), default=None,
                   help="validate on the first N validation images only (default: all; the test split is always "
                        "used whole)")

    g = p.add_argument_group("model (docs/methods.md, \"Models\"; unset settings take the paper's value for the "
                             "dataset and model, configs.py)")
    g.add_argument("--model", default="nwm", choices=MODEL_NAMES,
                   help="nwm: wave model; lstm/gru/rnn: conv recurrent baselines; cnn: local feed-forward; "
                        "unet: non-local baseline")
    g.add_argument("--readout", default="linear", choices=READOUTS,
                   help="temporal readout of the recurrent models (the CNN and the U-Net have none)")
    model_flag(g, "T")
    model_flag(g, "dt", positive_float)
    for key in ("c_mid", "hidden_channels", "readout_width", "readout_depth", "depth", "width"):
        model_flag(g, key)

    g = p.add_argument_group("training (docs/methods.md, \"Training\")")
    g.add_argument("--epochs", type=int_at_least(1), default=300, help="maximum number of epochs")
    g.add_argument("--min-epochs", type=int_at_least(0), default=250, help="no early stopping before this many epochs")
    g.add_argument("--patience", type=int_at_least(1), default=300,
                   help="stop after this many epochs without improvement (once --min-epochs have run)")
    g.add_argument("--tolerance", type=float_at_least(0), default=0.001,
                   help="the validation loss must drop by more than this to count as an improvement")
    g.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate")
    g.add_argument("--batch-size", type=int_at_least(1), default=64, help="images per batch (evaluation too)")
    g.add_argument("--seed", type=int_at_least(0, 2**64 - 1), default=0,
                   help="seeds the initialisation and the batch order")
    g.add_argument("--max-minutes", type=positive_float, default=None,
                   help="a time budget: stop after the epoch in which the training and validation time (summed over "
                        "epochs, across resumes) passes this many minutes, then test the kept checkpoint as usual "
                        "(default: none)")
    g.add_argument("--stop-after-minutes", type=positive_float, default=None,
                   help="pause: end this invocation after the epoch in which it has spent this many minutes, leaving "
                        "the run unfinished; the same command continues it, to exactly where an uninterrupted run "
                        "ends (for advancing runs in time slices; default: none)")
    g.add_argument("--end-by-minutes", type=positive_float, default=None,
                   help="a deadline this many minutes after the command started: pause before a training batch, "
                        "validation pass or test pass that would end past it (judged by the slowest recent one on "
                        "this device, threads and precision, with a 1.5x margin), keeping an unfinished epoch's "
                        "batches in last.pt. For a slice that must end by a machine's or a job's time limit; the "
                        "same command continues the run where it paused (default: none)")

    g = p.add_argument_group("speed (the model and recipe stay the same; --amp and --bf16-coupling change the "
                             "rounding)")
    add_device(g)
    add_threads(g)
    g.add_argument("--amp", default="auto", choices=["auto", "on", "off"],
                   help="bfloat16 autocast for the convolutions and the readout head (recurrences stay float32); "
                        "auto: on where bfloat16 is native (GPUs from Ampere on, CPUs with AMX/AVX512-BF16), else "
                        "float32")
    g.add_argument("--bf16-coupling", default="off", choices=["off", "on"],
                   help="with --amp on a CPU with AVX512-BF16: the NWM's coupling products (8+ hidden channels) as "
                        "bfloat16 dot products with float32 sums, about 1.1x faster than the float32 (Winograd) "
                        "products for 16 channels but with larger gradient errors and not shown to train as well "
                        "(docs/speed.md, 'The coupling in bfloat16'); off: float32")
    g.add_argument("--bptt-segment", default="auto", type=auto_or_int,
                   help="recompute the recurrence in segments of this many steps during backpropagation instead of "
                        "storing every step (saves memory, costs one more forward pass of the recurrence); 0 stores "
                        f"all; auto: on the CPU {AUTO_SEGMENT} when a batch's hidden sequence would exceed "
                        f"{AUTO_SEGMENT_BYTES // 2**20} MiB, else 0; on CUDA 0 where the stored steps fit in "
                        f"1/{GPU_SHARE} of the GPU's memory, else the longest segment that does (default: auto)")
    g.add_argument("--no-fused", dest="fused", action="store_false",
                   help="run the NWM recurrence through autograd instead of its hand-written forward and backward "
                        "pass (models/nwm_fused.py; same numbers, faster, less memory)")
    g.add_argument("--compile", default="auto", choices=["auto", "on", "off"],
                   help="torch.compile the recurrent step (the whole model for cnn/unet); auto: on for CUDA")
    g.add_argument("--cuda-graph", default="auto", choices=["auto", "on", "off"],
                   help="capture each training step (and evaluation batch) in one CUDA graph and replay it; auto: on "
                        "for CUDA, falling back to eager steps if capture fails")
    g.add_argument("--cpu-allocator", default="tuned", choices=["tuned", "system"],
                   help="tuned: keep freed memory for reuse instead of returning it to the OS after every tensor "
                        "(glibc; much faster CPU steps, see settings.tune_cpu_allocator)")

    g = p.add_argument_group("run directory")
    add_runs_root(g)
    g.add_argument("--run-name", default=None,
                   help="run directory under the runs root, a relative path that stays inside it (default: from "
                        "the settings, e.g. tetrominoes/nwm-linear-T100-h2-seed0)")
    g.add_argument("--resume", metavar="RUN_DIR", default=None,
                   help="resume the run in the folder RUN_DIR (also a moved one) with its stored settings (the "
                        "data root and threads too), in the precision (--amp, --bf16-coupling) of its last epoch; "
                        "the device, --bptt-segment, --compile, --cuda-graph, time limits and progress bars come "
                        "from this command, and a flag given wins where the run may change it (running the same "
                        "command again resumes too)")
    g.add_argument("--restart", action="store_true",
                   help="delete the run files (config.json, metrics.csv, checkpoint.pt, last.pt, test_metrics.json) of "
                        "an existing run of the same name and start over; nothing else is deleted")
    add_progress(g, log="one line per epoch")
    g.add_argument("--quickstart", action="store_true",
                   help="a CPU-sized demo: creates Tetrominoes if missing and trains a small NWM in minutes "
                        f"({', '.join(f'{k}={v}' for k, v in QUICKSTART.items())}); explicit flags still win")
    return p


def parse_args(argv=None):
    """(parser, args) of train.py's command line `argv`, every model setting filled (fill_model_defaults)."""
    return parse(argv)[:2]


def parse(argv=None):
    """(parser, args, the dataset's entry in the table: dataset_config.get_info, read here once per run)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quickstart:  # the preset replaces the defaults, explicit flags still win
        parser.set_defaults(**QUICKSTART)
        args = parser.parse_args(argv)
    if args.resume:
        config_path = Path(args.resume) / runs.CONFIG
        if not config_path.is_file() or not runs.is_run_dir(args.resume):
            parser.error(f"--resume {args.resume}: not a run directory (no {runs.CONFIG} of a run)")
        try:
            stored = runs.load_json(config_path)
        except runs.DamagedFile as e:
            parser.error(f"--resume {args.resume}: {e}; restore it, or train the run again under its name with "
                         f"--restart")
        if not isinstance(stored, dict):
            parser.error(f"--resume {args.resume}: {config_path} is damaged (it holds no settings); restore it from a "
                         f"copy")
        if args.run_name is not None or args.runs_root is not None:
            parser.error(f"--resume {args.resume} names the run's folder itself: leave out --run-name and --runs-root")
        parser.set_defaults(**{k: v for k, v in stored.items()
                               if k in vars(args) and k not in runs.OUTCOMES + runs.RESOLVED + runs.INVOCATION})
        try:
            parser.set_defaults(**runs.last_arithmetic(args.resume))  # the precision and coupling of its last epoch
        except runs.DamagedFile:  # and last.pt damaged too: open_run names what to restore
            pass
        args = parser.parse_args(argv)
    try:  # a built-in dataset, or one imported under this run's data root (the parser cannot list those)
        info = get_info(args.dataset, args.data_root)
    except DatasetError as e:
        parser.error(f"--dataset: {e}")
    if not is_recurrent(args.model) and "readout" in named_flags(argv):  # it would train something else than asked
        parser.error(f"--readout: the {args.model} has no temporal readout (its features go to its own head); "
                     f"leave --readout out")
    fill_model_defaults(args)
    return parser, args, info


def named_flags(argv):
    """The settings (destinations) that `argv` gives itself, not left at their defaults (nor taken from
    --quickstart or --resume)."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_known_args(argv)[0]))


def locate_run(parser, args):
    """The run directory: --resume's folder as given (a moved run resumes where it is), else --run-name under
    the runs root, refused before any work when its name could reach outside the root (runs.run_path)."""
    if args.resume:
        return Path(args.resume)
    if args.runs_root == "":
        parser.error("--runs-root is empty (an unset variable?); name the folder, or leave the flag out for "
                     "$WAVES_RUNS_ROOT, else ./runs")
    root = settings.runs_root(args.runs_root)
    try:
        run_dir = runs.run_path(root, args.run_name)
    except runs.BadRunName as e:
        parser.error(str(e))
    args.run_name = run_dir.relative_to(root).as_posix()  # as config.json records it: "./a//b/" is "a/b"
    return run_dir


def fill_model_defaults(args):
    """The paper's values (configs.paper_settings) for model settings left unset."""
    for key, value in paper_settings(args.dataset, args.model).items():
        if key != "readout" and getattr(args, key) is None:
            setattr(args, key, value)
    if not is_recurrent(args.model):
        args.readout = None  # feed-forward models have no temporal readout
    if args.run_name is None:
        args.run_name = runs.default_run_name(vars(args))


def check_settings(parser, args, info):
    """Refuse impossible settings before any work starts (`info`: the dataset's get_info); returns the dataset's
    metadata."""
    if args.model == "cnn" and features_per_channel(args.T) < 1:
        parser.error(f"--T {args.T}: the CNN makes T/2 - 1 features per channel, so --T must be at least 4")
    if args.model == "unet" and min(info.image_size) < 16:
        parser.error("the U-Net pools four times: images must be at least 16x16")
    try:
        meta = read_metadata(args.dataset, args.data_root)
        check_arrays(args.dataset, args.data_root)
    except DatasetError as e:
        parser.error(str(e))
    sizes = meta["split_sizes"]
    for flag, value, split in (("--train-size", args.train_size, "train"), ("--val-size", args.val_size, "val")):
        if value is not None and value > sizes[split]:
            parser.error(f"{flag} {value}: the {args.dataset} {split} split holds {sizes[split]} images "
                         f"(1..{sizes[split]})")
    train_size = args.train_size or sizes["train"]
    if args.batch_size > train_size:
        parser.error(f"--batch-size {args.batch_size} is larger than the {train_size} training images; the last "
                     f"partial batch of an epoch is dropped (the paper's recipe), so nothing would be trained: use a "
                     f"--batch-size of at most {train_size}")
    return meta


def memory_needed(args, info, split_sizes, model_config=None):
    """(bytes, parameters, images): the least memory a run needs, its parameters with their gradients and Adam
    state, its images and one batch's hidden sequence (activations and workspace left out). `split_sizes`: the
    dataset's {split: images}; `model_config`: run_model_config's, made if not given."""
    if args.bptt_segment == "auto":  # not yet resolved for a device (the launcher): every step stored, the most
        args = argparse.Namespace(**dict(vars(args), bptt_segment=0))
    with torch.device("meta"):  # shapes only
        params = count_parameters(build_model(args.model, **(model_config or run_model_config(args, info))))
    H, W = info.image_size
    images = (args.train_size or split_sizes["train"]) + (args.val_size or split_sizes["val"]) + split_sizes["test"]
    steps = (min(args.bptt_segment, args.T) if args.bptt_segment else args.T) if is_recurrent(args.model) else 0
    needed = (16 * params  # float32 weights, gradients and Adam's two moments
              + images * H * W * (4 * info.channels + 8)  # float32 images, int64 masks
              + args.batch_size * steps * args.hidden_channels * H * W * 4)  # float32 hidden states
    return needed, params, images


def check_memory(parser, args, meta, device, info, model_config):
    """Refuse a run whose memory_needed exceeds the device's memory, before any of it is allocated (`info`,
    `model_config`: the dataset's get_info and run_model_config)."""
    needed, params, images = memory_needed(args, info, meta["split_sizes"], model_config)
    available = settings.device_memory(device)
    if needed > available:
        parser.error(f"this run needs at least {needed / 2**30:,.1f} GiB ({params:,} parameters with their gradients "
                     f"and Adam state, {images:,} images, one batch's hidden sequence), but {device} has "
                     f"{available / 2**30:,.1f} GiB: use a smaller model (--hidden-channels, --c-mid, --readout-width,"
                     f" --T), a smaller --batch-size or --bptt-segment, or fewer images (--train-size)")


def ensure_quickstart_data(args):
    """--quickstart creates Tetrominoes when missing (normal runs refuse, see load_dataset)."""
    if not args.quickstart:
        return
    try:
        read_metadata(args.dataset, args.data_root)
    except DatasetNotFoundError:
        print(f"creating the Tetrominoes dataset under {settings.data_root(args.data_root)} (under a minute)")
        script = Path(__file__).resolve().parent / "data_scripts" / "create_tetrominoes.py"
        root = [] if args.data_root is None else ["--data-root", str(args.data_root)]
        subprocess.run([sys.executable, str(script), *root, *([] if args.progress else ["--no-progress"])], check=True)


def run_model_config(args, info):
    """build_model keywords of this run: the dataset's channels and classes (`info`: its get_info), then its
    model settings, each from a flag (the paper's value where none was given: fill_model_defaults)."""
    return dict(in_channels=info.channels, num_classes=info.num_classes,
                **{k: getattr(args, k) for k in model_config_keys(args.model) if hasattr(args, k)})


def first_record(run, model):
    """What config.json holds of a new run beside what runs.write_config adds: its settings (vars(args)), the
    keywords it was built from, what predict.py and pretrained.load need wherever the data is (class names,
    image size), the data's fingerprint, the parameter count, the device and precision it got, the versions."""
    return dict(vars(run.args), **run.model_config, class_names=list(run.info.class_names),
                image_size=list(run.info.image_size), data=run.data_fingerprint, num_params=count_parameters(model),
                device=str(run.device), amp=run.amp,
                versions=dict(python=platform.python_version(), torch=torch.__version__, numpy=np.__version__))


def invocation_record(first_epoch, hardware, bf16_coupling):
    """What config.json's `invocations` keeps of each command that trained the run (a run advanced
    in slices has one per slice): when it started, from which epoch, the code (git commit and
    whether the checkout differed from it), the command and what it ran on."""
    return dict(started=datetime.now(timezone.utc).isoformat(timespec="seconds"), first_epoch=first_epoch,
                git=runs.git_state(), command=" ".join([Path(sys.executable).name] + sys.argv),
                bf16_coupling=bf16_coupling, **hardware)


def new_state():
    """The training state of a run before its first epoch (last.pt keeps it between invocations)."""
    return dict(epoch=0, history=[], best_val_loss=math.inf, best_epoch=None, since_improvement=0)


@dataclass
class Run:
    """One invocation of a run: its settings, the dataset's entry (get_info) and the model's build_model
    keywords, directory, device and precision, its data (on the device), the change of budget open_run
    found, the stop signal and when the invocation started, and `state`, how far the run has come
    (new_state's keys: epochs run, the per-epoch history of metrics.csv, the best epoch and its
    validation loss, epochs since the last improvement), which last.pt keeps."""
    args: argparse.Namespace
    info: object  # dataset_config.DatasetInfo
    model_config: dict
    dir: Path
    device: torch.device
    amp: bool
    data: dict  # split -> (images, masks) on the device
    data_fingerprint: dict
    budget_change: dict  # runs.open_run's, None when the budget is as stored
    stop: StopSignals
    invoked: float  # time.perf_counter() when this invocation started
    state: dict = field(default_factory=new_state)

    @property
    def num_classes(self):
        return self.info.num_classes

    @property
    def terminal(self):
        """Per-batch bars on a terminal only; in a log, a line per epoch."""
        return shows_bars(self.args.progress)


class Deadline:
    """--end-by-minutes: the run pauses before a piece of work (a training batch, the validation pass, the
    test pass) that would end past the deadline, judged by the slowest such piece seen on this device,
    threads and precision, times MARGIN; a piece with nothing to judge it by runs. A pause between two
    batches keeps the epoch's progress (last.pt), so a slice loses none of its time to an unfinished epoch."""
    MARGIN = 1.5  # a shared CPU's pace varies by up to 2x within a slice

    def __init__(self, minutes, invoked, history, hardware, device="cpu", running_time=time.perf_counter):
        self.minutes, self.end = minutes, invoked + 60 * minutes  # on time.perf_counter's clock: stopped time counts
        self.running_time = running_time  # what a piece takes: time stopped (SIGSTOP) is no batch's
        # a GPU's steps queue up without waiting: the clock would time their launch, and a pause wait for the queue
        self.wait = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
        self.batch_seconds, self.why = [], None  # this invocation's training batches; the reason of a pause
        self.val_seconds = [row["val_seconds"] for row in history  # rows from before val_seconds lack it
                            if row.get("val_seconds") is not None and all(row.get(k) == v for k, v in hardware.items())]

    def left(self):
        return self.end - time.perf_counter()

    def too_late(self, seconds, what):
        """Why `what`, expected to take `seconds` (None: unknown), must not start now (also kept as `why`);
        None when it may."""
        if seconds is None or self.MARGIN * seconds <= self.left():
            return None
        took = f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} minutes"
        self.why = (f"--end-by-minutes {self.minutes:g}: {max(self.left(), 0) / 60:.1f} minutes left, under "
                    f"{self.MARGIN:g}x the {took} {what} here takes")
        return self.why

    def batch_check(self):
        """The `pause` of one training pass (engine.train_one_epoch): the reason not to start the next batch,
        from the slowest of the last 20 this invocation timed (the first runs unjudged)."""
        last = None

        def pause():
            nonlocal last
            self.wait()
            now = self.running_time()
            if last is not None:
                self.batch_seconds.append(now - last)
            last = now
            return self.too_late(max(self.batch_seconds[-20:], default=None), "a training batch")
        return pause

    def pass_seconds(self, images, batch_size, per_val_image=None):
        """What an evaluation pass over `images` may take: from the slowest of the last three validation
        passes here (`per_val_image`: the validation split's size, to scale by), else from the slowest
        training batch (which costs more than an evaluation one); None with neither."""
        if self.val_seconds and per_val_image:
            return max(self.val_seconds[-3:]) * images / per_val_image
        if self.batch_seconds:
            return max(self.batch_seconds[-20:]) * math.ceil(images / batch_size)
        return None


def stop_reason(run, first_epoch):
    """Why training ends before the next epoch, or None: checked before every epoch
    (`first_epoch`: the first epoch of this invocation, which always runs unless the run is done).
    "paused" leaves the run unfinished, as "deadline" does (PAUSES), which the Deadline decides between batches."""
    args, state = run.args, run.state
    if state["epoch"] >= args.epochs:
        return "max_epochs"
    if state["epoch"] >= args.min_epochs and state["since_improvement"] >= args.patience:
        return "early_stopping"
    if args.max_minutes is not None and sum(r["seconds"] for r in state["history"]) > 60 * args.max_minutes:
        return "time_budget"
    if (args.stop_after_minutes is not None and state["epoch"] > first_epoch
            and time.perf_counter() - run.invoked > 60 * args.stop_after_minutes):
        return "paused"
    return None


PAUSES = ("paused", "deadline")  # stop_reason's reasons that leave the run unfinished: the same command continues it
ENDINGS = {"max_epochs": "reached --epochs", "early_stopping": "early stopping (--patience)",
           "time_budget": "time budget (--max-minutes) spent"}


def start(run, status):
    """The model, optimizer, batch-order generator and epoch in progress of `run` (None, or a dict of the
    training pass so far, an engine.TrainingPass, and its seconds): new, or as last.pt left them
    (`status` "resume", which also restores run.state)."""
    args, device = run.args, run.device
    torch.manual_seed(args.seed)
    model = build_model(args.model, **run.model_config).to(device)
    capturable = args.cuda_graph != "off" and device.type == "cuda"  # Adam's state on the GPU, for graph capture
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, capturable=capturable)
    generator = torch.Generator().manual_seed(args.seed)  # batch order, saved for resuming
    in_progress = None
    if status == "resume":
        # onto the CPU: the generator's state must be a CPU tensor; the model and optimizer copy to their device
        last = runs.load_torch(run.dir / runs.LAST, "cpu")
        check_weights_fit(run, model, last, runs.LAST)
        if (run.dir / runs.CHECKPOINT).is_file():  # tested at the end: refused now rather than after training
            check_weights_fit(run, model, runs.load_torch(run.dir / runs.CHECKPOINT, "cpu"), runs.CHECKPOINT)
        model.load_state_dict(last["model"])
        for group in last["optimizer"]["param_groups"]:  # this run's flag, which the saved one would replace
            group["capturable"] = capturable
        optimizer.load_state_dict(last["optimizer"])
        generator.set_state(last["generator"])
        run.state = last["state"]
        in_progress = last.get("epoch_in_progress")
        if in_progress is None:
            print(f"resuming {run.dir} after epoch {run.state['epoch']}")
        else:
            in_progress = dict(in_progress, training=TrainingPass.from_state(in_progress["training"], run.num_classes,
                                                                             device))
            training = in_progress["training"]
            print(f"resuming {run.dir} in epoch {run.state['epoch'] + 1}, after {training.done} of its "
                  f"{training.total} batches")
    return model, optimizer, generator, in_progress


def check_weights_fit(run, model, saved, name):
    """RunConflict unless the weights in `saved` (what the run file `name` holds) fit `model`, the model of
    the run's settings: a config.json edited to another model would otherwise fail inside torch."""
    if not runs.weights_fit(model, saved.get("model") if isinstance(saved, dict) else None):
        raise runs.RunConflict(f"{run.dir / name} holds another model than the one the run's settings build "
                               f"({run.args.model}, {count_parameters(model):,} parameters): was {runs.CONFIG} edited, "
                               f"or {name} copied from another run? Restore the original file, or --restart to train "
                               f"this model from scratch.")


def fit(run, status):
    """The epoch loop of `run` (`status`: "new" or "resume", from runs.open_run) until stop_reason gives a
    reason or the Deadline (--end-by-minutes) a pause; every finished epoch is saved (runs.save_epoch), and so
    is an epoch stopped between two batches (keep_progress). Returns the model and the reason."""
    args, device, amp = run.args, run.device, run.amp
    model, optimizer, generator, in_progress = start(run, status)
    state = run.state  # updated in place, and saved in last.pt after every epoch
    print(f"{args.model} on {args.dataset}: {count_parameters(model):,} parameters, {len(run.data['train'][0]):,} "
          f"training images, device {device} ({torch.get_num_threads()} CPU threads)"
          f"{', bf16 autocast' if amp else ''} -> {run.dir}")
    images, masks = run.data["train"]
    train_model, compile_outcome = compile_checked(model, args.compile, device, amp, images[:args.batch_size],
                                                   masks[:args.batch_size])
    step, graphed_eval, graph_outcome = make_steps(train_model, optimizer, amp, run.data["train"], args.batch_size,
                                                   args.cuda_graph)
    computed = dict(amp=amp, precision=runs.precision(amp), tf32=False,  # set_backends: no TF32
                    cuda_graph=graph_outcome, compile=compile_outcome)
    hardware = runs.hardware(device, amp)
    invocation = invocation_record(state["epoch"] + 1, hardware, args.bf16_coupling == "on")
    # a reopened run's test (or a damaged one) is of a run that now trains again: it goes once the run starts
    (run.dir / runs.TEST_METRICS).unlink(missing_ok=True)
    # each invocation may run on another machine, from another commit
    runs.write_config(run.dir, invocation, computed, first_record(run, model) if status == "new" else None,
                      run.budget_change)
    deadline = (Deadline(args.end_by_minutes, run.invoked, state["history"], hardware, device, run.stop.running_time)
                if args.end_by_minutes else None)
    val_images = len(run.data["val"][0])

    bar = tqdm(total=args.epochs, initial=state["epoch"], desc="epochs", disable=not run.terminal, dynamic_ncols=True)
    first_epoch, paused_at = state["epoch"], None
    while (reason := stop_reason(run, first_epoch)) is None:
        run.stop.check()  # the epoch's first safe point: its clock starts here
        epoch, started = state["epoch"] + 1, run.stop.running_time()  # time stopped (SIGSTOP) is not training time
        if in_progress:  # the rest of an epoch stopped between two batches
            training, spent, slices = in_progress["training"], in_progress["seconds"], in_progress.get("slices", [])
            in_progress = None
        else:
            training, spent, slices = TrainingPass.shuffled(len(images), args.batch_size, generator,
                                                            run.num_classes, device), 0.0, []
        done_before, slices = training.done, runs.slices_ran_on(slices, hardware)
        try:
            train_metrics = train_one_epoch(step, images, masks, run.num_classes, args.batch_size, generator,
                                            run.terminal, f"epoch {epoch}", run.stop, training,
                                            deadline.batch_check() if deadline else None)
            if train_metrics is not None and (run.stop.asked or deadline and deadline.too_late(
                    deadline.pass_seconds(val_images, args.batch_size, val_images), "the validation pass")):
                train_metrics = None  # its training pass is done, and kept
            if train_metrics is None:
                seconds = spent + run.stop.running_time() - started
                kept = keep_progress(run, model, optimizer, generator, training, seconds, done_before, hardware,
                                     slices)
                if run.stop.asked:
                    if kept:
                        print(f"kept epoch {epoch}'s first {training.done} of {training.total} batches in "
                              f"{run.dir / runs.LAST}", file=sys.stderr)
                    raise Interrupted(run.stop.signum)
                reason, paused_at = "deadline", (
                    f"before epoch {epoch}" if training.done == 0 else
                    f"in epoch {epoch}, its training pass done and kept" if training.done == training.total else
                    f"in epoch {epoch} after {training.done} of its {training.total} batches, which are kept")
                break
            val_started = run.stop.running_time()
            try:
                val = evaluate(train_model, *run.data["val"], run.num_classes, args.batch_size, amp,
                               graphed=graphed_eval, stop=run.stop)
            except Interrupted:  # stopped at once (a scheduler's kill may follow): the training pass is kept
                seconds = spent + val_started - started
                if keep_progress(run, model, optimizer, generator, training, seconds, done_before, hardware, slices):
                    print(f"kept epoch {epoch}'s training pass in {run.dir / runs.LAST}; its validation runs when "
                          f"it resumes", file=sys.stderr)
                raise
            val_seconds = run.stop.running_time() - val_started
            if not math.isfinite(val["loss"]):
                raise NonFiniteLossError(f"the validation loss became {val['loss']}")
        except NonFiniteLossError as e:
            kept = (f"the best checkpoint so far (epoch {state['best_epoch']}, val loss {state['best_val_loss']:.4f}) "
                    f"is kept in {run.dir / runs.CHECKPOINT}" if state["best_epoch"] else
                    "no epoch finished, so there is no checkpoint")
            print(f"error: training stopped in epoch {epoch}: {e}; {kept}. Train again with a lower --lr or another "
                  f"--seed (they define the run: add --restart to replace this one, or --run-name for a new one).",
                  file=sys.stderr)
            sys.exit(1)
        if deadline:
            deadline.val_seconds.append(val_seconds)
        improved = val["loss"] < state["best_val_loss"] - args.tolerance
        if improved:
            state.update(best_val_loss=val["loss"], best_epoch=epoch, since_improvement=0)
        else:
            state["since_improvement"] += 1
        state["epoch"], seconds = epoch, spent + run.stop.running_time() - started
        state["history"].append(runs.epoch_row(epoch, train_metrics, val, optimizer.param_groups[0]["lr"],
                                               seconds, improved, hardware, val_seconds, slices))
        runs.save_epoch(run.dir, state, model, optimizer, generator, val, improved)
        bar.update()
        tqdm.write(f"epoch {epoch:3d}/{args.epochs}  train loss {train_metrics['loss']:.4f}  val loss {val['loss']:.4f}"
                   f"  val fg IoU {val['iou_foreground']:.4f}  val acc {val['acc']:.4f}"
                   f"  {seconds:.1f}s{'  *' if improved else ''}")
    bar.close()
    # scaled from validation passes, which on a GPU may replay a CUDA graph where the test pass runs eagerly
    if reason not in PAUSES and deadline and deadline.too_late(
            deadline.pass_seconds(len(run.data["test"][0]), args.batch_size, val_images), "the test pass"):
        reason, paused_at = "deadline", f"after epoch {state['epoch']}, before testing"
    if reason == "deadline":
        print(f"paused {paused_at} ({deadline.why}); run the same command to continue {run.dir}")
    elif reason == "paused":
        print(f"paused after epoch {state['epoch']} (--stop-after-minutes {args.stop_after_minutes:g}); run the same "
              f"command to continue {run.dir}")
    return model, reason


def keep_progress(run, model, optimizer, generator, training, seconds, done_before, hardware, slices=()):
    """Saves an epoch stopped between two batches (`training`, its TrainingPass, and the running `seconds`
    spent on it) in last.pt with the arithmetic it ran in (`hardware`, the coupling) and what its slices ran
    on (`slices`, runs.slices_ran_on), unless no batch of it
    ran since `done_before` (last.pt already holds that); returns whether it saved. A non-finite loss,
    weight or optimizer state is refused rather than kept (the last batch's step may overflow after its
    finite loss)."""
    if training.done == done_before:
        return False
    if not math.isfinite(training.mean_loss()):
        raise NonFiniteLossError(f"the training loss became {training.mean_loss()}")
    state_tensors = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
    if not all(bool(torch.isfinite(t).all()) for t in [*model.state_dict().values(), *state_tensors]
               if t.is_floating_point()):
        raise NonFiniteLossError("the weights or the optimizer's state became non-finite")
    runs.save_progress(run.dir, run.state, model, optimizer, generator,
                       dict(training=training.state_dict(), seconds=seconds, precision=hardware["precision"],
                            bf16_coupling=run.args.bf16_coupling == "on", slices=list(slices)))
    return True


def test_best(run, model, reason):
    """Tests the kept checkpoint of `run` (loaded into `model`) on the test split after training ended
    for `reason`; writes and returns the test metrics."""
    state, test_split = run.state, run.data["test"]
    print(f"training ended after epoch {state['epoch']}: {ENDINGS[reason]}; testing the best checkpoint "
          f"(epoch {state['best_epoch']})")
    best = runs.load_torch(run.dir / runs.CHECKPOINT, run.device)
    model.load_state_dict(best["model"])
    test = evaluate(model, *test_split, run.num_classes, run.args.batch_size, run.amp, run.terminal, desc="test",
                    stop=run.stop)
    background = background_only_metrics(test_split[1].cpu(), run.num_classes)
    test.update(best_epoch=state["best_epoch"], epochs_run=state["epoch"], stop_reason=reason,
                best_val_loss=state["best_val_loss"], background_only=background)
    runs.save_json(test, run.dir / runs.TEST_METRICS)
    print(f"test ({len(test_split[0])} images, best epoch {state['best_epoch']}):\n"
          f"  model            {format_metrics(test)}\n"
          f"  background only  {format_metrics(background)}\n"
          f"written to {run.dir}")
    return test


def shipped_comparison(test, data_fingerprint, name="tetrominoes/nwm"):
    """A line setting the quickstart's test score beside that of the shipped model `name`, if that
    one was trained on the same data (the same arrays); else None."""
    try:
        run_dir, _ = pretrained.resolve(name)
        config, shipped = runs.load_json(run_dir / runs.CONFIG), runs.load_json(run_dir / runs.TEST_METRICS)
    except (OSError, ValueError):  # not shipped in this copy, or damaged: nothing to compare with
        return None
    if config.get("data", {}).get("sha256") != data_fingerprint["sha256"]:
        return None
    images = config.get("train_size") or config["data"]["split_sizes"]["train"]
    return (f"A full training goes further: the shipped {name} (the paper's recipe, {shipped['epochs_run']} epochs "
            f"on {images:,} images) scores test fg IoU {shipped['iou_foreground']:.4f}, this run "
            f"{test['iou_foreground']:.4f}.")


def main(argv=None):
    invoked = time.perf_counter()
    try:
        return run_command(argv, invoked)
    except KeyboardInterrupt:  # before the run started (its own Ctrl-C is handled in run_command)
        print("\ninterrupted before training started", file=sys.stderr)
        sys.exit(EXIT_STATUS[signal.SIGINT])


def run_command(argv, invoked):
    parser, args, info = parse(argv)
    run_dir = locate_run(parser, args)
    if args.cpu_allocator == "tuned":
        settings.tune_cpu_allocator()
    settings.set_threads(args.threads)
    try:
        device = settings.pick_device(args.device)
    except ValueError as e:
        parser.error(f"--device: {e}")
    set_backends(device)
    amp = args.amp == "on" or (args.amp == "auto" and settings.bf16_supported(device))
    allow_bf16_coupling(args.bf16_coupling == "on")
    if args.bptt_segment == "auto":
        args.bptt_segment = auto_bptt_segment(is_recurrent(args.model), args.batch_size, args.T,
                                              args.hidden_channels, info.image_size, device)
    model_config = run_model_config(args, info)
    ensure_quickstart_data(args)
    meta = check_settings(parser, args, info)
    check_memory(parser, args, meta, device, info, model_config)
    data_fingerprint = fingerprint(meta)
    try:
        data = {"train": load_dataset(args.dataset, "train", args.data_root, args.train_size),
                "val": load_dataset(args.dataset, "val", args.data_root, args.val_size),
                "test": load_dataset(args.dataset, "test", args.data_root)}
    except DatasetError as e:
        parser.error(str(e))
    data = {split: (x.to(device), y.to(device)) for split, (x, y) in data.items()}  # batches are drawn by index
    try:
        with runs.locked(run_dir):  # held until the run ends: no second process writes here meanwhile
            status, budget_change = runs.open_run(run_dir, runs.run_defining(vars(args)), data_fingerprint,
                                                  args.restart)
            if status == "resume":  # in the arithmetic of its last epoch, unless the command names another
                runs.check_arithmetic(run_dir, amp, args.bf16_coupling == "on", named_flags(argv))
            if status == "finished":
                test = runs.load_json(run_dir / runs.TEST_METRICS)
                budget = ", ".join("--" + k.replace("_", "-") for k in runs.BUDGET[1:])
                print(f"{run_dir} is already finished (test iou_foreground {test['iou_foreground']:.4f}); nothing "
                      f"to do. Raise --epochs (or {budget}) to train it further, or --restart.")
                return test
            with StopSignals() as stop:
                run = Run(args, info, model_config, run_dir, device, amp, data, data_fingerprint, budget_change, stop,
                          invoked)
                model, reason = fit(run, status)
                test = None if reason in PAUSES else test_best(run, model, reason)
    except runs.RunConflict as e:
        parser.error(str(e))
    except runs.WriteError as e:
        print(f"error: {e}. Nothing finished is lost: free some space or choose a writable --runs-root, then run "
              f"the same command.", file=sys.stderr)
        sys.exit(1)
    except CompileError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except (Interrupted, KeyboardInterrupt) as e:
        signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
        done, batches = len(runs.load_metrics(run_dir)), runs.epoch_in_progress(run_dir)
        print(f"\ninterrupted ({signal.Signals(signum).name}) after epoch {done}{batches}: every finished epoch "
              f"(and batch) is kept in {run_dir}; run the same command to resume", file=sys.stderr)
        sys.exit(EXIT_STATUS[signum])
    if test is not None and args.quickstart:
        comparison = shipped_comparison(test, data_fingerprint)
        if comparison:
            print(comparison)
        print("This was a CPU-sized demo. The paper's experiment is the same command without --quickstart\n"
              "(10,000 images, 300 epochs, 256-wide head; best on a GPU), e.g.\n"
              "  python train.py --dataset tetrominoes --model nwm --readout linear --seed 0\n"
              "or all the Tetrominoes NWM runs of the paper: bash scripts/tetrominoes/nwm.sh (see README).")
    return test


if __name__ == "__main__":
    main()
