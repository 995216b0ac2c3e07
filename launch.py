"""Runs train.py commands: one after another, N at a time on each GPU (or on the CPU, each pinned to its
share of the cores), as a SLURM job array, or as one time slice of a queue of runs (docs/reproducing.md).

    python launch.py --grid tetrominoes/nwm --dry-run     # a family of configs.GRID (all: every family)
    python launch.py --commands FILE --per-gpu 2          # the train.py commands of a file, one a line
    python launch.py --config "--dataset mnist --model nwm" --seeds 3    # configurations of your own

Every command is parsed as train.py parses it before anything runs. The launcher owns its runs: on
SIGTERM, SIGINT or SIGHUP every run it started pauses at a safe point, and it exits once they have.
"""
import argparse
import contextlib
import ctypes
import io
import itertools
import os
import re
import shlex
import signal
import subprocess
import sys
import tarfile
import time
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

import cli
import runs
import settings
import train
from cli import float_at_least, int_at_least, positive_float
from configs import GRID
from dataset_config import DatasetError, get_info, read_metadata

REPO = Path(__file__).resolve().parent
FAMILIES = [f"{dataset}/{model}" for dataset, model in GRID]
PAPER_DATASETS = list(dict.fromkeys(dataset for dataset, _ in GRID))
CREATED_FROM_MNIST = {"multi_mnist": "mnist"}  # Multi-MNIST is drawn from the MNIST files
MAX_SEEDS = 100  # the paper runs 10 or 12; more is a typo, not a grid
QUEUE_MIN_START = 5  # --min-start's default, in minutes: None until then, so that one given without --queue is seen
SLURM_FLAGS = ("partition", "time", "gpus", "cpus", "mem", "account", "max_parallel")
SLICE_FLAGS = ("minutes", "queue", "min_start", "archive", "part_mb", "runs_root", "mnist_from_dir", "data_root")
CREATE_DATA_FLAGS = ("create_data", "dry_run", "python", "script", "caller_dir", "data_root", "mnist_from_dir")
TRAIN_PATH_FLAGS = ("--runs-root", "--data-root", "--resume")  # train.py flags that name a folder
# train.memory_needed leaves out activations and workspace: the Multi-MNIST NWM at batch 64 takes about 28 GB on a
# GPU, 3.3 times its 8.4 GiB estimate
GPU_HEADROOM = 4
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
PR_SET_PDEATHSIG = 1  # prctl: the kernel signals a run whose launcher died, even of SIGKILL


class CommandError(Exception):
    """What the launcher refuses, with its exit status (2: bad input, as argparse)."""

    def __init__(self, message, status=2):
        super().__init__(message)
        self.status = status


class Command(NamedTuple):
    argv: list  # the interpreter, train.py and its flags
    args: argparse.Namespace  # the flags as train.py parses them
    run_dir: Path  # the run directory it trains, as train.py finds it


def build_parser(prog="launch.py", description=__doc__):
    p = cli.ArgumentParser(prog=prog, description=description, allow_abbrev=False, formatter_class=cli.HelpFormatter,
                           usage=f"{prog} [options] [-- train.py ARGS...]",
                           epilog="-- ARGS...  train.py flags for every run, e.g. -- --epochs 50 --train-size 2000")
    g = p.add_argument_group("the commands")
    g.add_argument("commands_file", nargs="?", metavar="COMMANDS_FILE", help="the same as --commands")
    g.add_argument("--commands", metavar="FILE", help="train.py commands, one a line (what --dry-run prints)")
    g.add_argument("--grid", choices=[*FAMILIES, "all"], metavar="DATASET/MODEL",
                   help="a family of configs.GRID; all: every family, the datasets created first, the runs scored last")
    g.add_argument("--config", action="append", metavar="FLAGS", help="a configuration's train.py flags (repeatable)")
    g.add_argument("--script", help=argparse.SUPPRESS)  # the calling script: its name and --help
    g.add_argument("--caller-dir", help=argparse.SUPPRESS)  # where the calling script was started
    g.add_argument("--array-task", type=int_at_least(0), help=argparse.SUPPRESS)  # a SLURM task: its lines

    g = p.add_argument_group("how they run")
    g.add_argument("--dry-run", action="store_true", help="print the commands (--slurm: write the files), run nothing")
    g.add_argument("--seeds", type=int_at_least(1, MAX_SEEDS), metavar="N", help="seeds 0..N-1, not the paper's")
    g.add_argument("--python", metavar="PATH", help="the runs' interpreter, also in place of the one each line of a "
                   "commands file names (default: .venv/bin/python, else python3; a file's lines keep theirs)")
    g.add_argument("--keep-going", action="store_true", help="go on after a failed run, list the failures at the end")
    g.add_argument("--per-gpu", type=int_at_least(1), default=1, metavar="N", help="N runs at once on each visible "
                   "GPU as its memory allows (none: on the CPU's cores), logs in <runs root>/logs/; --slurm: N a task")
    g.add_argument("--gpu-gb", type=int_at_least(1), metavar="G",
                   help=f"GPU memory of a run (default: {GPU_HEADROOM} x train.py's estimate of the largest)")

    g = p.add_argument_group("SLURM: a job array, its files in <runs root>/slurm/")
    g.add_argument("--slurm", action="store_true", help="submit the job array instead of running here")
    g.add_argument("--partition", metavar="P", help="the partition")
    g.add_argument("--time", metavar="HH:MM:SS", help="each task's time limit")
    g.add_argument("--gpus", type=int_at_least(0), metavar="N", help="GPUs per task (default 1)")
    g.add_argument("--cpus", type=int_at_least(1), metavar="N", help="CPU cores per task")
    g.add_argument("--mem", metavar="M", help="memory per task, e.g. 32G")
    g.add_argument("--account", metavar="A", help="the account charged")
    g.add_argument("--max-parallel", type=int_at_least(1), metavar="N", help="at most N tasks at once")

    g = p.add_argument_group("datasets and time slices (scripts/create_data.sh, scripts/advance_runs.sh)")
    g.add_argument("--create-data", action="store_true", help="create the datasets where missing, check them all")
    g.add_argument("--slice", action="store_true", help="check the commands' datasets, advance each run by a slice")
    g.add_argument("--minutes", type=positive_float, metavar="M",
                   help="a run pauses after the epoch past M minutes (with --queue: between two batches, before "
                        "one that would end past the slice's end, keeping the epoch's progress)")
    g.add_argument("--queue", action="store_true",
                   help="the runs share the slice in turn, each with what is left as its deadline (--end-by-minutes)")
    g.add_argument("--min-start", type=float_at_least(0), metavar="MIN",
                   help=f"with --queue, the least time worth starting a run for (default: {QUEUE_MIN_START})")
    cli.add_runs_root(g).help = "where the runs live and continue (default: $WAVES_RUNS_ROOT, else ./runs, as train.py)"
    cli.add_data_root(g)
    g.add_argument("--mnist-from-dir", metavar="DIR", help="the four MNIST files (any source, gzip'd or not)")
    g.add_argument("--archive", metavar="PREFIX", help="pack the runs it touched and the logs as PREFIX.tar.gz.part-*")
    g.add_argument("--part-mb", type=int_at_least(1), default=15, metavar="MB", help="the largest archive part")
    return p


def parse_args(argv):
    """(the launcher's options, the train.py flags after `--`); a calling script's header comment is its --help."""
    own, extra = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (list(argv), [])
    script = next((own[i + 1] for i, a in enumerate(own[:-1]) if a == "--script"), None)
    header = script and "\n".join(line[2:] for line in itertools.takewhile(
        lambda line: line.startswith("#"), Path(script).read_text().splitlines()[1:]))
    parser = build_parser(script or "launch.py", header or __doc__)
    args, unknown = parser.parse_known_args(own)
    if unknown:
        parser.error(f"unknown option {unknown[0]!r}; train.py flags go after --" if unknown[0].startswith("-")
                     else f"one COMMANDS_FILE only, not also {unknown[0]!r}")
    grids = [a for a in own if a == "--grid" or a.startswith("--grid=")]
    if len(grids) > 1:  # argparse would keep the last: a family script run with another family's --grid
        own_family = f" ({os.path.relpath(script, REPO)} names its own family)" if script else ""
        parser.error(f"--grid given {len(grids)} times{own_family}; run the script of the family you want, or "
                     f"launch.py --grid DATASET/MODEL once")
    why = refusal(parser, args, extra)
    if why:
        parser.error(why)
    # the paths given are named from where the launcher (or its script) started, the runs start in the repository root
    start = args.caller_dir or os.getcwd()
    args.commands = args.commands or args.commands_file
    for name in ("commands", "archive", "mnist_from_dir", "data_root", "runs_root"):
        if getattr(args, name):
            setattr(args, name, from_start(getattr(args, name), start))
    if args.python and os.sep in args.python:  # a bare name (python3) is looked up on PATH
        args.python = from_start(args.python, start)
    why = args.archive and archive_refusal(args.archive)  # found now, not once the slice has trained
    if why:
        parser.error(why)
    args.min_start = QUEUE_MIN_START if args.min_start is None else args.min_start
    args.interpreter_named = args.python is not None  # it then replaces the interpreter of a commands file's lines
    args.prog, args.python = parser.prog, args.python or default_python()
    return args, [*train_paths_from_start(extra, start)]


def from_start(path, start):
    """`path` as the runs see it from the repository root: relative to it where inside it (no machine's folders in the
    runs' configs and commands), else absolute."""
    path = Path(os.path.normpath(os.path.join(start, os.path.expanduser(path))))
    return str(path.relative_to(REPO) if path.is_relative_to(REPO) else path)


def archive_refusal(archive):
    """Why ARCHIVE.tar.gz.part-* could not be written (its folder, or the nearest one there is, is a file or not
    writable), or None. The folder itself is made only when the archive is packed: a dry run writes nothing."""
    folder = REPO / Path(archive).parent  # archive is relative to the repository root, or absolute
    nearest = next(path for path in [folder, *folder.parents] if os.path.exists(path))  # no error where we may not look
    if not nearest.is_dir():
        return f"--archive {archive}: {nearest} is a file, not a folder; name a PREFIX in a folder"
    if not os.access(nearest, os.W_OK | os.X_OK):
        return f"--archive {archive}: {nearest} is not writable; name a PREFIX in a folder you may write to"
    return None


def train_paths_from_start(extra, start):
    """The train.py flags after `--`, their paths (TRAIN_PATH_FLAGS) named from `start` as the launcher's own are."""
    after_flag = False
    for word in extra:
        flag, equals, value = word.partition("=")
        if after_flag:
            yield from_start(word, start)
        elif equals and flag in TRAIN_PATH_FLAGS:
            yield f"{flag}={from_start(value, start)}"
        else:
            yield word
        after_flag = word in TRAIN_PATH_FLAGS


def refusal(parser, args, extra):
    """Why the options mean nothing together, or None."""
    given = {a.dest: a.option_strings[0] for a in parser._actions  # {dest: flag} of the options given
             if a.option_strings and a.default is not argparse.SUPPRESS and getattr(args, a.dest) != a.default}
    if args.create_data:
        others = [f for d, f in given.items() if d not in CREATE_DATA_FLAGS] + ["train.py ARGS"] * bool(extra)
        return f"{others[0]} means nothing to --create-data" if others else None
    for flags, needed, on in ((SLURM_FLAGS, "--slurm", args.slurm), (SLICE_FLAGS, "--slice", args.slice)):
        stray = [flag for dest, flag in given.items() if dest in flags
                 and not (dest == "mnist_from_dir" and args.grid == "all")]  # --grid all creates the datasets too
        if stray and not on:
            return f"{stray[0]} needs {needed}"
    commands = args.commands or args.commands_file
    min_start = QUEUE_MIN_START if args.min_start is None else args.min_start
    sources = [source for source in (args.commands, args.commands_file, args.grid, args.config) if source]
    return next((why for wrong, why in [
        (len(sources) != 1, "give one source of commands: a commands file, --grid or --config"),
        (args.config and not args.seeds, "--config needs --seeds"),
        (args.seeds and commands, "--seeds is for --grid and --config; the lines of a commands file name their own "
                                  "seeds"),
        (args.slice and args.minutes is None, "--minutes is required for a slice"),
        (args.min_start is not None and not args.queue, "--min-start applies to --queue only: add --queue, or leave "
                                                        "--min-start out"),
        (args.queue and args.minutes is not None and min_start >= args.minutes,
         f"--min-start {min_start:g} is not under --minutes {args.minutes or 0:g}: the queue would start no run"),
        ((args.slice or args.array_task is not None) and not commands, "a slice or a SLURM task runs a commands file"),
    ] if wrong), None)


def default_python():
    """The repository's virtual environment if there is one, else python3 (relative: runs start in the repo root)."""
    return ".venv/bin/python" if os.access(REPO / ".venv/bin/python", os.X_OK) else "python3"


def error(args, message):
    print(f"{args.prog}: error: {message}", file=sys.stderr, flush=True)

# -----------------------------------------------------------------------------
# the commands


def check_command(argv, where):
    """The Command of `argv`, parsed and located as train.py does, or CommandError saying why train.py would not."""
    if len(argv) < 2 or argv[1] != "train.py":
        raise CommandError(f"{where}: not a train.py command (INTERPRETER train.py FLAGS...): {shlex.join(argv)}")
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said), contextlib.redirect_stdout(said):
            parser, args = train.parse_args(argv[2:])
            return Command(argv, args, train.locate_run(parser, args).resolve())
    except SystemExit:
        why = re.search(r": error: (.*)", said.getvalue())
        raise CommandError(f"{where}: train.py would refuse it ({why[1] if why else 'no reason given'}): "
                           f"{shlex.join(argv)}") from None


def read_commands(path, extra):
    """[(argv + extra, where)] of a commands file's lines, read with shell rules; CommandError names a bad line."""
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise CommandError(f"cannot read {path} as a text file of commands: {e}") from None
    found = []
    for number, line in enumerate(lines, 1):
        try:
            argv = shlex.split(line, comments=True)  # a `# note` at the end stays a note
        except ValueError as e:
            raise CommandError(f"{path} line {number}: cannot read it ({e}): {line}") from None
        unexpanded = [word for word in argv if "$" in word or "`" in word or word.startswith("~")]
        if unexpanded:
            raise CommandError(f"{path} line {number}: {unexpanded[0]!r} would not be expanded here (no shell runs "
                               f"the line): write the value itself: {line}")
        if argv:
            found.append((argv + extra, f"{path} line {number}"))
    if not found:
        raise CommandError(f"{path} holds no command")
    return found


def make_commands(args, extra):
    """{family: [Command]}: the runs of each family (one but for --grid all), every command checked. A family
    names the logs and SLURM files: tetrominoes_nwm, the commands file's name, or its script's."""
    if args.slice:  # where the slice's runs live and find their data, and no progress bars in the logs
        extra = extra + ["--runs-root", str(settings.runs_root(args.runs_root)),
                         "--data-root", str(settings.data_root(args.data_root)), "--no-progress"]
        extra += [] if args.queue else ["--stop-after-minutes", f"{args.minutes:g}"]
    if args.commands:
        script = Path(args.script) if args.script else None
        lines = [([args.python, *argv[1:]] if args.interpreter_named else argv, where)
                 for argv, where in read_commands(args.commands, extra)]
        found = {f"{script.parent.name}_{script.stem}" if script else Path(args.commands).stem: lines}
    else:
        grid = {"launch": (args.config, args.seeds)} if args.config else {
            f"{d}_{m}": ([f"--dataset {d} --model {m} --{setting.replace('_', '-')} {v}" for v in values], seeds)
            for (d, m), (setting, values, seeds) in GRID.items() if args.grid in ("all", f"{d}/{m}")}
        # seeds outermost: a grid stopped halfway has every configuration at its first seeds
        found = {family: [([args.python, "train.py", *shlex.split(config), "--seed", str(seed), *extra], f"command {i}")
                          for i, (seed, config) in enumerate(itertools.product(range(args.seeds or seeds), configs), 1)]
                 for family, (configs, seeds) in grid.items()}
    commands, trained_by = {}, {}
    for family, lines in found.items():
        commands[family] = [check_command(argv, where) for argv, where in lines]
        for command, (_, where) in zip(commands[family], lines):
            if command.run_dir in trained_by:
                raise CommandError(f"{where} and {trained_by[command.run_dir]} both train the run {command.run_dir}, "
                                   f"and two commands must not share a run directory: give each its own --run-name")
            trained_by[command.run_dir] = where
    return commands


def progress(run_dir):
    """"finished after epoch 3 of 3" or "paused after epoch 1 of 20" (", and 40 of 156 batches of epoch 2"), from
    what train.py left in run_dir."""
    if not (run_dir / runs.CONFIG).is_file():
        return "ended without a run directory"
    try:
        epochs, config = len(runs.load_metrics(run_dir)), runs.load_json(run_dir / runs.CONFIG)
    except (runs.DamagedFile, OSError) as e:
        return f"ended, its run unreadable: {e}"
    if runs.is_finished(run_dir):
        return f"finished after epoch {epochs} of {config.get('epochs')}"
    return f"paused after epoch {epochs} of {config.get('epochs')}{runs.epoch_in_progress(run_dir)}"

# -----------------------------------------------------------------------------
# where the runs go: GPUs and cores


def visible_gpus():
    """{GPU: its free memory in GB, None where unknown} of the GPUs the runs may use: those of
    $CUDA_VISIBLE_DEVICES if it is set (empty: none, as CUDA reads it), else every GPU nvidia-smi lists."""
    try:
        listed = subprocess.run(["nvidia-smi", "--query-gpu=index,memory.free", "--format=csv,noheader,nounits"],
                                capture_output=True, text=True, timeout=30).stdout
        free = {gpu: int(mib) / 1024 for gpu, mib in (line.split(",") for line in listed.splitlines())}
    except (OSError, subprocess.TimeoutExpired, ValueError):
        free = {}
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return {gpu: free.get(gpu) for gpu in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if gpu}
    return free


def run_gb(command):
    """GPU memory in GB of a run: GPU_HEADROOM x train.memory_needed on its data (else the paper's split sizes)."""
    args = command.args
    info = get_info(args.dataset, args.data_root)
    try:
        sizes = read_metadata(args.dataset, args.data_root)["split_sizes"]
    except DatasetError:  # not created yet
        sizes = dict(zip(info.splits, info.paper_split_sizes))
    return GPU_HEADROOM * train.memory_needed(args, info, sizes)[0] / 2**30


def slot_cores(slot, slots):
    """The cores of slot `slot` of `slots` sharing this process's cores (its affinity mask)."""
    cores = sorted(os.sched_getaffinity(0))
    per = max(1, len(cores) // slots)
    return {cores[i % len(cores)] for i in range(slot * per, (slot + 1) * per)}


def make_slots(args, commands):
    """[(gpu, cores)] of the slots where runs go at once, and the GPUs: --per-gpu on each GPU, round robin,
    fewer where its free memory holds fewer of the largest run (CommandError where it holds none), or on the
    CPU where there is no GPU. A single slot takes what the launcher has."""
    gpus = visible_gpus()
    if args.per_gpu == 1 and len(gpus) <= 1:
        return [(None, None)], list(gpus)
    per = dict.fromkeys(gpus, args.per_gpu)
    gb = (args.gpu_gb or max(map(run_gb, commands))) if any(free is not None for free in gpus.values()) else None
    for gpu, free in gpus.items():
        if free is None:
            print(f"GPU {gpu}: free memory unknown (no answer from nvidia-smi): not checked", file=sys.stderr)
        elif free < gb:
            raise CommandError(f"GPU {gpu} has {int(free)} GB free and a run takes about {gb:.0f} GB: free it, leave "
                               f"it out of CUDA_VISIBLE_DEVICES, or set --gpu-gb", status=1)
        elif free // gb < args.per_gpu:
            per[gpu] = int(free // gb)
            print(f"GPU {gpu}: {int(free)} GB free, about {gb:.0f} GB a run (--gpu-gb): {per[gpu]} at a time "
                  f"instead of {args.per_gpu}", file=sys.stderr)
    slot_gpus = [gpu for k in range(args.per_gpu) for gpu in gpus if k < per[gpu]] or [None] * args.per_gpu
    if len(slot_gpus) == 1:
        return [(None, None)], list(gpus)
    return [(gpu, slot_cores(k, len(slot_gpus))) for k, gpu in enumerate(slot_gpus)], list(gpus)

# -----------------------------------------------------------------------------
# running: the launcher owns its runs


def in_child(cores=None):
    """In a started process, before it runs: its cores, and its end with the launcher's (even by SIGKILL)."""
    if cores:
        os.sched_setaffinity(0, cores)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Runner:
    """Runs commands in order in slots [(gpu or None, cores or None)], each as one is free, and says how each
    ended. On a stop signal it passes the signal on to every run it started (SIGINT as SIGINT, else SIGTERM:
    train.py pauses at a safe point, and stops at once on a second one), starts nothing more and returns once
    they have stopped."""

    def __init__(self, args, commands, family, slots, log_dir=None):
        self.args, self.commands, self.family, self.slots, self.log_dir = args, commands, family, slots, log_dir
        self.running, self.statuses = {}, {}  # slot -> (index, Popen); index -> exit status (None: not started)
        self.log_starts = {}  # index -> where this invocation's output begins in the run's log
        self.stopped, self.asked, self.told = None, 0, {}  # the first stop signal, how many came, pid -> passed on

    def stop(self, signum, frame=None):
        self.stopped, self.asked = self.stopped or signum, self.asked + 1
        self.pass_on()

    def pass_on(self):
        """Every stop signal that came to every run, also to a run started while one came."""
        for _, process in list(self.running.values()):
            while self.told.get(process.pid, 0) < self.asked:
                self.told[process.pid] = self.told.get(process.pid, 0) + 1
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(self.passed_on())

    def passed_on(self):
        """The signal a stop passes on to the runs: SIGINT as SIGINT, else SIGTERM (train.py pauses on both)."""
        return signal.SIGINT if self.stopped == signal.SIGINT else signal.SIGTERM

    def log_path(self, i):
        """<runs root>/logs/<the run's path under the runs root, / as _>.log: one log per run, whichever line of
        which file names it (a run's output stays in its log when lines come and go)."""
        if not self.log_dir:
            return None
        run_dir = self.commands[i].run_dir
        root = self.log_dir.parent.resolve()
        name = run_dir.relative_to(root) if run_dir.is_relative_to(root) else Path(run_dir.name)
        return self.log_dir / f"{'_'.join(name.parts)}.log"

    def start(self, slot, i, argv):
        gpu, cores = self.slots[slot]
        where = (f" on GPU {gpu}" if gpu is not None else "") + (f" on cores {','.join(map(str, sorted(cores)))}"
                                                                  if cores else "")
        print(f"[{i + 1}/{len(self.commands)}] {'started' + where + ': ' if self.log_dir else ''}{shlex.join(argv)}",
              flush=True)
        env = dict(os.environ, **({} if gpu is None else {"CUDA_VISIBLE_DEVICES": gpu}))
        log = open(self.log_path(i), "a") if self.log_dir else None  # a run's earlier slices stay in its log
        if log:
            self.log_starts[i] = log.tell()
            print(f"=== {datetime.now().isoformat(timespec='seconds')} {shlex.join(argv)}", file=log, flush=True)
        try:  # in its own process group: a Ctrl-C at the terminal reaches it once, through the launcher
            self.running[slot] = i, subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, process_group=0,
                                                     stderr=subprocess.STDOUT if log else None,
                                                     preexec_fn=lambda: in_child(cores))
        except OSError as e:  # no such interpreter: the run fails as a shell's would
            print(f"cannot start {argv[0]}: {e}", file=log or sys.stderr, flush=True)
            self.end(i, 127)
        finally:
            if log:
                log.close()

    def output(self, i):
        """What run i wrote to its log in this invocation ("" without a log)."""
        if i not in self.log_starts:
            return ""
        with open(self.log_path(i), errors="replace") as log:
            log.seek(self.log_starts[i])
            return log.read()

    def end(self, i, status):
        self.statuses[i] = status if status >= 0 else 128 - status  # killed by a signal: as shells report it
        if self.stopped and self.statuses[i] == 128 + self.passed_on():  # train.py's exit after a stop: a pause
            print(f"[{i + 1}/{len(self.commands)}] stopped: {progress(self.commands[i].run_dir)}", flush=True)
        elif self.statuses[i]:
            log = f" (log: {self.log_path(i)})" if self.log_dir else ""
            error(self.args, f"run {i + 1}/{len(self.commands)} failed (exit status {self.statuses[i]}): "
                             f"{shlex.join(self.commands[i].argv)}{log}")
        else:
            print(f"[{i + 1}/{len(self.commands)}] {progress(self.commands[i].run_dir)}", flush=True)

    def run(self, argv_of, keep_going):
        """Runs argv_of(i) for each command i in turn, asked for when its turn comes (None: not to run); returns
        {i: exit status, None where it was not started}."""
        previous = {s: signal.signal(s, self.stop) for s in STOP_SIGNALS
                    if signal.getsignal(s) is not signal.SIG_IGN}  # nohup's SIGHUP stays ignored
        upcoming = list(range(len(self.commands)))
        try:
            while (upcoming and not self.stopped) or self.running:
                for slot in [s for s in range(len(self.slots)) if s not in self.running]:
                    if upcoming and not self.stopped:
                        i = upcoming.pop(0)
                        argv = argv_of(i)
                        if argv is None:
                            self.statuses[i] = None
                        else:
                            self.start(slot, i, argv)
                time.sleep(0.2)
                for slot, (i, process) in list(self.running.items()):
                    if process.poll() is not None:
                        del self.running[slot]
                        self.end(i, process.returncode)
                if any(self.statuses.values()) and not keep_going:
                    upcoming.clear()  # start nothing more; the runs going on finish
                self.pass_on()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        return self.statuses


def run_commands(args, commands, family, argv_of=None):
    """Runs the commands here: one after another with their output on the terminal, or several at once
    (and every slice) with each one's output in <runs root>/logs/. Returns the launcher's exit status."""
    slots, gpus = make_slots(args, commands)
    n, log_dir = len(commands), None
    if len(slots) > 1 or args.slice:
        log_dir = settings.runs_root(commands[0].args.runs_root) / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        print(f"{n} runs, {args.per_gpu} at a time on each of: {' '.join(gpus) or 'the CPU'}; logs in {log_dir}/")
    runner = Runner(args, commands, family, slots, log_dir)
    keep_going = args.keep_going or args.slice or args.array_task is not None
    statuses = runner.run(argv_of or (lambda i: commands[i].argv), keep_going)
    eager = [runner.log_path(i) for i in statuses if "CUDA graph capture failed" in runner.output(i)]
    if eager:
        print(f"{len(eager)} of {n} runs trained with eager steps, their CUDA graph capture failed (why: the "
              f"warning in each log, and cuda_graph in the run's config.json):\n" + "\n".join(f"  {e}" for e in eager))
    failed = [shlex.join(commands[i].argv) for i, status in statuses.items() if status]
    if runner.stopped:
        print(f"{args.prog}: stopped by {signal.Signals(runner.stopped).name}: every run it started has paused "
              f"or ended; the same command resumes them", file=sys.stderr)
        return 128 + runner.stopped
    if failed and len(slots) == 1 and not keep_going:
        return next(s for s in statuses.values() if s)  # one at a time: the failed run's own status
    if failed:
        error(args, f"{len(failed)} of {n} runs failed:\n" + "\n".join(f"  {c}" for c in failed))
        return 1
    not_started = list(statuses.values()).count(None)
    print(f"all {n} runs finished" if all(runs.is_finished(c.run_dir) for c in commands) else
          "all runs paused or finished" + (f", {not_started} not started" if not_started else ""))
    return 0

# -----------------------------------------------------------------------------
# SLURM


def sbatch_value(value):
    """`value` as sbatch reads it on an #SBATCH line: as it is where it is plain, else in double quotes with \\ and "
    escaped (sbatch's own rules, not a shell's: a space ends the value, an unquoted # begins a comment)."""
    text = str(value)
    if re.fullmatch(r"[\w@%+=:,./-]+", text):
        return text
    return '"' + re.sub(r'([\\"])', r"\\\1", text) + '"'


def write_array(args, commands, family):
    """Writes the commands file and a job array whose task i runs lines N i + 1 .. N (i + 1) of it at once
    (N = --per-gpu) through this launcher; submits it unless --dry-run."""
    n, per = len(commands), args.per_gpu
    tasks = (n + per - 1) // per
    slurm_dir = settings.runs_root(commands[0].args.runs_root).resolve() / "slurm"
    (slurm_dir / "logs").mkdir(parents=True, exist_ok=True)  # SLURM does not create the log folder itself
    # The process id keeps two submissions in one second apart: tasks read their file late.
    stem = f"{slurm_dir}/{family}_{datetime.now():%Y%m%d-%H%M%S}_{os.getpid()}"
    options = dict(job_name=family, array=f"0-{tasks - 1}" + (f"%{args.max_parallel}" if args.max_parallel else ""),
                   output=f"{slurm_dir}/logs/%A_%a.out", partition=args.partition, time=args.time,
                   gres=None if args.gpus == 0 else f"gpu:{args.gpus or 1}", cpus_per_task=args.cpus, mem=args.mem,
                   account=args.account)
    runs.save_text("".join(shlex.join(c.argv) + "\n" for c in commands), Path(f"{stem}.commands"))
    runs.save_text("\n".join([
        "#!/usr/bin/env bash",
        *(f"#SBATCH --{k.replace('_', '-')}={sbatch_value(v)}" for k, v in options.items() if v is not None),
        f"# Task i runs lines {per} i + 1 .. {per} (i + 1) of the commands file at once through launch.py, which",
        "# passes a stop signal on to them; it fails if one of them fails.",
        f"cd {shlex.quote(str(REPO))}",
        f"exec {shlex.quote(sys.executable)} launch.py --commands {shlex.quote(stem)}.commands --per-gpu {per} "
        f"--array-task \"$SLURM_ARRAY_TASK_ID\"", ""]), Path(f"{stem}.sbatch"))
    if args.dry_run:
        print(f"wrote {stem}.commands ({n} runs, {tasks} array tasks) and {stem}.sbatch; not submitted (--dry-run):\n")
        print(Path(f"{stem}.sbatch").read_text(), end="")
        return 0
    try:
        return subprocess.run(["sbatch", f"{stem}.sbatch"]).returncode
    except FileNotFoundError:
        error(args, f"sbatch not found on PATH. Wrote {stem}.commands ({n} runs) and {stem}.sbatch; submit them "
                    f"where SLURM is available with: {shlex.join(['sbatch', f'{stem}.sbatch'])}")
        return 1

# -----------------------------------------------------------------------------
# datasets and time slices


def create_data(args, datasets, data_root=None, check_all=False):
    """Creates `datasets` where missing under the data root (prints every command, runs none, with --dry-run),
    then checks them (check_all: every dataset there). Returns what went wrong, "" when nothing did."""
    root = [] if data_root is None else ["--data-root", str(data_root)]  # else the data scripts' own default

    def step(argv):
        print(shlex.join(argv), flush=True)
        return 0 if args.dry_run else subprocess.run(argv, cwd=REPO, preexec_fn=in_child).returncode

    offline_first = sorted(datasets, key=lambda name: name == "mnist" or name in CREATED_FROM_MNIST)
    missing = [name for name in offline_first if args.dry_run  # those made before are checked below
               or not (settings.data_root(data_root) / get_info(name, data_root).folder / "dataset.json").is_file()]
    for name in dict.fromkeys(n for name in missing for n in (CREATED_FROM_MNIST.get(name), name) if n):  # MNIST first
        mnist = ["--from-dir", args.mnist_from_dir] if args.mnist_from_dir and name == "mnist" else []
        if step([args.python, *shlex.split(get_info(name).create_command)[1:], *root, *mnist]):
            return f"creating {name} failed"
    if step([args.python, "data_scripts/verify_datasets.py", *([] if check_all else datasets), *root]):
        return "the data differs from what it should be"
    return ""


def pack(archive, runs_root, run_dirs, part_mb):
    """The runs and <runs root>/logs as ARCHIVE.tar.gz.part-aa, -ab, ... of at most part_mb MB each (as
    split names them); the old parts are replaced only once the new archive is whole."""
    prefix, whole = Path(f"{archive}.tar.gz.part-"), Path(f"{archive}.tar.gz.partial")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(whole, "w:gz") as tar:
        for path in [*run_dirs, runs_root / "logs"]:
            if path.exists():
                tar.add(path, arcname=str(path.relative_to(runs_root)))
    for old in prefix.parent.glob(prefix.name + "*"):
        old.unlink()
    with open(whole, "rb") as f:
        for k, chunk in enumerate(iter(lambda: f.read(part_mb * 2**20), b"")):
            part = Path(f"{prefix}{chr(97 + k // 26)}{chr(97 + k % 26)}")
            part.write_bytes(chunk)
            print(f"{part}  {len(chunk)} bytes")
    whole.unlink()
    print(f"unpack with: cat {shlex.quote(str(prefix))}* | tar xzf - -C {shlex.quote(str(runs_root))}")


def run_slice(args, commands, family):
    """Creates and checks the commands' datasets, runs them (with the slice's flags, see make_commands) and
    packs the runs it touched (a file written since the slice began)."""
    runs_root = settings.runs_root(commands[0].args.runs_root)  # --runs-root, see make_commands
    failed = create_data(args, sorted({c.args.dataset for c in commands}), args.data_root)
    if failed:
        error(args, f"{failed}: nothing was trained")
        return 1
    since, slice_end = time.time() - 1, time.monotonic() + 60 * args.minutes  # file times are coarser than the clock

    def with_what_is_left(i):  # --queue: each run gets what is left of the slice when its turn comes, as a deadline
        left = (slice_end - time.monotonic()) / 60
        if left < args.min_start:
            print(f"not started, under {args.min_start:g} minutes of the slice left: {shlex.join(commands[i].argv)}")
            return None
        return commands[i].argv + ["--end-by-minutes", f"{max(left, 0.1):.1f}"]

    status = run_commands(args, commands, family, with_what_is_left if args.queue else None)
    touched = [run for run in runs.find_runs(runs_root)
               if any(p.is_file() and p.stat().st_mtime >= since for p in run.rglob("*"))]
    if args.archive and touched:
        try:
            pack(args.archive, runs_root, touched, args.part_mb)
        except OSError as e:  # the disk filled up, the folder went away: the runs themselves are intact
            error(args, f"packing the runs as {args.archive}.tar.gz.part-* failed ({e}); nothing is lost: the "
                        f"{len(touched)} runs this slice touched are still in {runs_root}, their logs in "
                        f"{runs_root / 'logs'}")
            return status or 1
    return status


def launch(args, family, commands):
    """Runs, prints or submits one family's commands; the exit status."""
    if args.array_task is not None:  # a SLURM task: its --per-gpu lines of the file, all at once (several: a log each)
        mine = commands[args.array_task * args.per_gpu:(args.array_task + 1) * args.per_gpu]
        if not mine:
            raise CommandError(f"array task {args.array_task} has no lines: the file holds {len(commands)}")
        args.per_gpu = len(mine)  # the last task may hold fewer: they share what it has
        return run_commands(args, mine, family)
    if args.slurm:
        return write_array(args, commands, family)
    if args.dry_run:
        print("\n".join(shlex.join(c.argv) for c in commands))
        return 0
    return run_slice(args, commands, family) if args.slice else run_commands(args, commands, family)


def score_runs(score):
    """Runs the scoring command `score`; its exit status (127: its interpreter would not start, as a shell says)."""
    try:
        return subprocess.run(score, preexec_fn=in_child).returncode
    except OSError as e:
        print(f"cannot start {score[0]}: {e}", file=sys.stderr, flush=True)
        return 127


def main(argv=None):
    sys.stdout.reconfigure(line_buffering=True)
    args, extra = parse_args(sys.argv[1:] if argv is None else list(argv))
    os.chdir(REPO)  # train.py's relative paths (./data, ./runs) are the repository's
    try:
        families = {} if args.create_data else make_commands(args, extra)
        first = next(iter(families.values()))[0].args if families else args
        if args.create_data or args.grid == "all":  # --grid all: the datasets first, also for SLURM
            failed = create_data(args, PAPER_DATASETS, first.data_root, check_all=True)
            if failed:
                error(args, failed)
                return 1
        failed, scoring_failed = [], False
        for family, commands in families.items():
            status = launch(args, family, commands)
            if status > 128 or (status and not args.keep_going):
                return status  # stopped by a signal, or a failure
            failed += [family] * bool(status)
        if args.grid == "all":  # the score table of whatever finished
            score = [args.python, "produce_scores.py", *(["--runs-root", first.runs_root] if first.runs_root else []),
                     *(["--data-root", first.data_root] if first.data_root else [])]
            later = f"once the jobs are done, score the runs from {REPO} with: " if args.slurm else ""
            print(later + shlex.join(score))
            if not (args.slurm or args.dry_run) and score_runs(score):
                error(args, f"scoring failed (its output above); once that is fixed, score the runs from {REPO} "
                            f"with: {shlex.join(score)}")
                scoring_failed = True
        if len(families) > 1 and failed:
            error(args, f"runs failed in: {' '.join(failed)}")
        return 1 if failed or scoring_failed else 0
    except CommandError as e:
        error(args, e)
        return e.status
    except BrokenPipeError:  # the reader went away (--dry-run | head): stop quietly, as a shell tool does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
