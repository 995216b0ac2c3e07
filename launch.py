"""Runs train.py commands, in the role mae's submitit launchers play: one after another, N at a
time on each GPU (or on the CPU, each pinned to its share of the cores), as a SLURM job array,
or as one time slice of a queue of runs.

    python launch.py --commands FILE [--per-gpu 2] [-- train.py ARGS]   # the lines of a file
    python launch.py --grid tetrominoes/nwm --dry-run                    # a family of configs.GRID
    scripts/<dataset>/<model>.sh [options]       # a family script: its --config lines, and the seeds
    scripts/advance_runs.sh FILE --minutes M ... # = launch.py --slice FILE ...

Everything runs from the repository root, so relative paths (--python, the commands' flags,
$WAVES_DATA_ROOT, $WAVES_RUNS_ROOT) are taken from there. A commands file is read with shell
rules (quotes, `# comments`); a line that is not a train.py command train.py would accept is
refused, with its line number, before anything runs. The launcher owns its runs: SIGTERM,
SIGINT or SIGHUP stops every run it started (train.py pauses at its next safe point, so the
same command resumes it) and it exits once they have. Running it again is safe: train.py skips
finished runs and resumes paused ones.
"""
import argparse
import contextlib
import ctypes
import functools
import io
import os
import shlex
import signal
import subprocess
import sys
import tarfile
import time
from datetime import datetime
from pathlib import Path

import runs
import settings
import train
import cli
from cli import float_at_least, int_at_least, positive_float
from configs import GRID
from dataset_config import DatasetError, get_info
from models import is_recurrent

REPO = Path(__file__).resolve().parent
MAX_SEEDS = 100  # the paper runs 10 or 12; more is a typo, not a grid
SLURM_FLAGS = ("partition", "time", "gpus", "cpus", "mem", "account", "max_parallel")
SLICE_FLAGS = ("minutes", "queue", "min_start", "archive", "part_mb", "runs_root")
DATA_FLAGS = ("mnist_from_dir", "data_root")
CREATE_DATA_OPTIONS = {"create_data", "dry_run", "python", "script", *DATA_FLAGS}  # what --create-data reads
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
PR_SET_PDEATHSIG = 1  # prctl: the kernel signals a run whose launcher died, even of SIGKILL
CREATED_FROM_MNIST = {"multi_mnist": "mnist"}  # Multi-MNIST is drawn from the MNIST files


class CommandError(Exception):
    """What the launcher refuses before anything runs, with its exit status (2: bad input, as argparse)."""

    def __init__(self, message, status=2):
        super().__init__(message)
        self.status = status


def build_parser(prog="launch.py", description=__doc__):
    parser = argparse.ArgumentParser(
        prog=prog, description=description, allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter,
        usage=f"{prog} [options] [-- train.py ARGS...]",
        epilog="-- ARGS...  extra train.py flags for every run, e.g. -- --epochs 50 --train-size 2000")
    source = parser.add_argument_group("the commands")
    source.add_argument("commands_file", nargs="?", metavar="COMMANDS_FILE", help="the same as --commands")
    source.add_argument("--commands", metavar="FILE", help="train.py commands, one a line (what --dry-run prints)")
    source.add_argument("--grid", metavar="DATASET/MODEL", choices=[f"{d}/{m}" for d, m in GRID],
                        help="a family of the paper's grid (configs.GRID) x its seeds")
    source.add_argument("--config", action="append", default=[], metavar="FLAGS",
                        help="one configuration of a family script: train.py flags without --seed (repeatable)")
    source.add_argument("--paper-seeds", type=int_at_least(1, MAX_SEEDS), metavar="N",
                        help="with --config: the paper's number of seeds")
    source.add_argument("--script", help=argparse.SUPPRESS)  # the family script that called: its name and help
    source.add_argument("--array-task", type=int_at_least(0), help=argparse.SUPPRESS)  # a SLURM task's lines
    # scripts/run_all.sh: the options it acts on itself, checked here, as shell assignments
    source.add_argument("--shell-settings", action="store_true", help=argparse.SUPPRESS)

    how = parser.add_argument_group("how they run")
    how.add_argument("--dry-run", action="store_true", help="print the train.py commands, one a line, run nothing "
                     "(with --slurm: write the files, submit nothing)")
    how.add_argument("--seeds", type=int_at_least(1, MAX_SEEDS), metavar="N",
                     help=f"seeds 0..N-1 instead of the paper's count (1 to {MAX_SEEDS})")
    how.add_argument("--python", metavar="PATH", help="the interpreter of the commands (default: the repo's "
                     ".venv/bin/python if present, else python3)")
    how.add_argument("--keep-going", action="store_true", help="go on after a failed run, list the failures at the "
                     "end and exit non-zero if any (default: start nothing more after the first failure)")
    how.add_argument("--per-gpu", type=int_at_least(1), default=1, metavar="N",
                     help="runs at once on each GPU of $CUDA_VISIBLE_DEVICES (else every GPU nvidia-smi lists; set "
                          "but empty: none), fewer where a GPU's free memory holds fewer; with no GPU, N at once on "
                          "the CPU, each pinned to its share of the cores. Each run's output goes to <runs root>/logs/"
                          ". With --slurm: N runs in each array task, sharing its GPU (default 1)")
    how.add_argument("--gpu-gb", type=int_at_least(1), metavar="G", help="GPU memory one run takes, in GB, for "
                     "--per-gpu (default: 28 for a recurrent model on Multi-MNIST, else 8)")

    slurm = parser.add_argument_group("SLURM: one job array, one task per run (or per --per-gpu runs); writes "
                                      "<runs root>/slurm/<family>_<time>.commands and .sbatch, logs in slurm/logs/")
    slurm.add_argument("--slurm", action="store_true", help="submit the job array instead of running here")
    slurm.add_argument("--partition", metavar="P", help="the partition (default: the cluster's)")
    slurm.add_argument("--time", metavar="HH:MM:SS", help="each task's time limit")
    slurm.add_argument("--gpus", type=int_at_least(0), metavar="N", help="GPUs per task (default 1; 0: none)")
    slurm.add_argument("--cpus", type=int_at_least(1), metavar="N", help="CPU cores per task")
    slurm.add_argument("--mem", metavar="M", help="memory per task, e.g. 32G")
    slurm.add_argument("--account", metavar="A", help="the account the tasks are charged to")
    slurm.add_argument("--max-parallel", type=int_at_least(1), metavar="N", help="at most N tasks at once")

    data = parser.add_argument_group("the datasets (scripts/create_data.sh; a slice does the same for the datasets of "
                                     "its commands first)")
    data.add_argument("--create-data", action="store_true", help="create every dataset where missing (MNIST from "
                      "--mnist-from-dir, else the internet), then check them all; with --dry-run print the commands")
    cli.add_data_root(data)
    data.add_argument("--mnist-from-dir", metavar="DIR", help="the four MNIST files (any source, gzip'd or not), "
                      "for MNIST and Multi-MNIST")

    sliced = parser.add_argument_group(
        "time slices (scripts/advance_runs.sh): create and check the datasets, advance every run by a slice, "
        "summarise and pack the runs it touched")
    sliced.add_argument("--slice", action="store_true", help="run the commands file as one time slice")
    sliced.add_argument("--minutes", type=positive_float, metavar="M",
                        help="the slice: each run pauses after the epoch that passes M minutes (required)")
    sliced.add_argument("--queue", action="store_true",
                        help="the runs share the slice instead: --per-gpu at a time in order, each with what is left "
                             "of it; a finished run is skipped at once, so the same command advances the first "
                             "unfinished runs of the file each session")
    sliced.add_argument("--min-start", type=float_at_least(0), metavar="MIN",
                        help="with --queue, the least time worth starting a run for (default 5)")
    # the shared flag, but a slice's runs live in the committed results/runs unless told otherwise
    cli.add_runs_root(sliced).help = "where the runs live and continue (default: results/runs)"
    sliced.add_argument("--archive", metavar="PREFIX", help="pack the runs it touched, and <runs root>/logs, into "
                        "PREFIX.tar.gz.part-aa, -ab, ...; unpack with cat PREFIX.tar.gz.part-* | tar xzf - -C ROOT")
    sliced.add_argument("--part-mb", type=int_at_least(1), metavar="MB", help="largest archive part (default 15)")
    return parser


def header(script):
    """The first comment block of a script without its '#'s: its part of --help."""
    lines = []
    for line in Path(script).read_text().splitlines()[1:]:
        if not line.startswith("#"):
            break
        lines.append(line[2:] if line.startswith("# ") else line[1:])
    return "\n".join(lines)


def usage_error(parser, message):
    """The usage line and the one-line error, exit status 2 (as argparse)."""
    print(f"usage: {parser.usage}\n{parser.prog}: error: {message} (see --help)", file=sys.stderr)
    sys.exit(2)


def parse_args(argv):
    """(parser, options, extra train.py flags): options are the launcher's, extras follow `--`."""
    argv = list(argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    script = next((own[i + 1] for i, a in enumerate(own[:-1]) if a == "--script"), None)
    parser = build_parser(script or "launch.py", header(script) if script else __doc__)
    parser.error = lambda message: usage_error(parser, message)
    args, unknown = parser.parse_known_args(own)
    if unknown and unknown[0].startswith("-"):
        usage_error(parser, f"unknown option {unknown[0]!r}; train.py flags go after --")
    if unknown:
        usage_error(parser, f"one COMMANDS_FILE only, not also {unknown[0]!r}")
    check_options(parser, args)
    if args.create_data and extra:
        usage_error(parser, "--create-data takes no train.py ARGS")
    return parser, args, extra


def check_options(parser, args):
    """Options that mean nothing together, refused before any work."""
    slurm_only = [f for f in SLURM_FLAGS if getattr(args, f) is not None]
    if slurm_only and not args.slurm:  # without --slurm they would silently start the grid here
        usage_error(parser, f"--{slurm_only[-1].replace('_', '-')} needs --slurm")
    if args.create_data:
        others = [a.option_strings[0] for a in parser._actions if a.dest not in CREATE_DATA_OPTIONS
                  and a.default != argparse.SUPPRESS and getattr(args, a.dest) != a.default]
        if others:
            usage_error(parser, f"{others[0]} means nothing to --create-data")
        return
    slice_only = [f for f in SLICE_FLAGS + DATA_FLAGS if getattr(args, f) not in (None, False)]
    if slice_only and not args.slice:
        usage_error(parser, f"--{slice_only[-1].replace('_', '-')} needs --slice (scripts/advance_runs.sh)")
    if args.slice and args.minutes is None:
        usage_error(parser, "--minutes is required for a slice")
    if args.commands_file and args.commands:
        usage_error(parser, "give COMMANDS_FILE or --commands, not both")
    # a commands file is named from where the launcher is started; everything else runs from the repo root
    given = args.commands or args.commands_file
    args.commands = os.path.abspath(given) if given else None
    sources = [name for name, value in (("a commands file", args.commands), ("--grid", args.grid),
                                         ("--config", args.config)) if value]
    if len(sources) != 1:
        usage_error(parser, "give one source of commands: a commands file, --grid or --config"
                    if sources else "no commands: give a commands file, --grid or --config")
    if args.commands and not Path(args.commands).is_file():
        usage_error(parser, f"no file {args.commands}")
    if args.config and not (args.seeds or args.paper_seeds):
        usage_error(parser, "--config needs --paper-seeds or --seeds")
    if args.seeds and args.commands:
        usage_error(parser, "--seeds is for --grid and --config; the lines of a commands file name their own seeds")
    if args.slice and not args.commands:
        usage_error(parser, "a slice runs a commands file")


def default_python():
    """The repository's virtual environment if there is one, else python3 (relative: runs start in the repo root)."""
    return ".venv/bin/python" if os.access(REPO / ".venv/bin/python", os.X_OK) else "python3"

# -----------------------------------------------------------------------------
# the commands


@functools.cache
def train_parser():
    parser = train.build_parser()
    parser.prog = "train.py"
    return parser


def check_command(argv, where, data_root=None):
    """train.py's parsed flags of `argv`, or CommandError saying why train.py would refuse it (`data_root`: the
    launcher's, which a slice appends to the commands)."""
    if len(argv) < 2 or argv[1] != "train.py":
        raise CommandError(f"{where}: not a train.py command (INTERPRETER train.py FLAGS...): {shlex.join(argv)}")
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured), contextlib.redirect_stdout(captured):
            parsed = train_parser().parse_args(argv[2:])
    except SystemExit:
        errors = [line for line in captured.getvalue().splitlines() if line.startswith("train.py: error: ")]
        why = errors[-1].removeprefix("train.py: error: ") if errors else "no reason given"
        raise CommandError(f"{where}: train.py would refuse it ({why}): {shlex.join(argv)}") from None
    try:  # as train.parse_args checks it: the parser cannot list the datasets imported under a data root
        get_info(parsed.dataset, parsed.data_root or data_root)
    except DatasetError as e:
        raise CommandError(f"{where}: train.py would refuse it (--dataset: {e}): {shlex.join(argv)}") from None
    return parsed


def grid_configs(family):
    """configs.GRID's configurations of `family` ("dataset/model") as train.py flags, and its seed count."""
    dataset, model = family.split("/")
    setting, values, seeds = GRID[dataset, model]
    return [f"--dataset {dataset} --model {model} --{setting.replace('_', '-')} {v}" for v in values], seeds


def grid_commands(python, configs, seeds, extra):
    # Seeds outermost: a grid stopped halfway has every configuration at its first seeds.
    return [[python, "train.py", *shlex.split(config), "--seed", str(seed), *extra]
            for seed in range(seeds) for config in configs]


def read_commands(path, extra):
    """The commands of a file, each with `extra` appended; CommandError naming the first bad line."""
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise CommandError(f"cannot read {path} as a text file of commands: {e}") from None
    commands = []
    for number, line in enumerate(lines, 1):
        try:
            argv = shlex.split(line, comments=True)  # so a `# note` at a line's end stays a note
        except ValueError as e:
            raise CommandError(f"{path} line {number}: cannot read it ({e}): {line}") from None
        unexpanded = [word for word in argv if "$" in word or "`" in word or word.startswith("~")]
        if unexpanded:  # the line is not run by a shell
            raise CommandError(f"{path} line {number}: {unexpanded[0]!r} would not be expanded here (no shell runs "
                               f"the line): write the value itself: {line}")
        if argv:
            commands.append((argv + extra, f"{path} line {number}"))
    if not commands:
        raise CommandError(f"{path} holds no command")
    return commands


def family_name(args):
    """What names the logs and the SLURM files: the family script (tetrominoes_nwm), grid family, file or "launch"."""
    if args.script:
        script = Path(args.script).resolve()
        return f"{script.parent.name}_{script.stem}"
    if args.grid:
        return args.grid.replace("/", "_")
    return Path(args.commands).stem if args.commands else "launch"


def make_commands(args, extra):
    """[(argv, parsed train.py flags)] of every run, each checked as train.py would parse it."""
    if args.commands:
        found = read_commands(args.commands, extra)
    else:
        configs, paper_seeds = grid_configs(args.grid) if args.grid else (args.config, args.paper_seeds)
        found = [(argv, f"command {i}") for i, argv in
                 enumerate(grid_commands(args.python, configs, args.seeds or paper_seeds, extra), 1)]
        if args.array_task is not None:
            raise CommandError("a SLURM task runs lines of a commands file")
    checked, trained_by = [(argv, check_command(argv, where, args.data_root), where) for argv, where in found], {}
    for argv, args, where in checked:
        folder = run_dir(args)
        if folder in trained_by:
            raise CommandError(f"{where} and {trained_by[folder]} both train the run {folder}, and two commands "
                               f"must not share a run directory: give each its own --run-name, or keep one")
        trained_by[folder] = where
    return [(argv, args) for argv, args, _ in checked]


def run_dir(args):
    """The run directory a command's parsed train.py flags train, named as train.py names it."""
    if args.resume:
        return Path(args.resume).resolve()
    train.fill_model_defaults(args)
    return (settings.runs_root(args.runs_root) / args.run_name).resolve()

# -----------------------------------------------------------------------------
# where the runs go: GPUs and cores


def visible_gpus():
    """The GPUs the runs may use: $CUDA_VISIBLE_DEVICES if set (empty: none, as CUDA reads it), else
    the GPUs nvidia-smi lists, else none."""
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return [g for g in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if g]
    try:
        listed = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return listed.split()


def run_gpu_gb(parsed):
    """GPU memory in GB the largest run takes: 28 for a recurrent model on Multi-MNIST (16 channels
    of 128x128 at every step, measured), else 8."""
    return 28 if any(a.dataset == "multi_mnist" and is_recurrent(a.model) for a in parsed) else 8


def free_gb(gpu):
    try:
        answer = subprocess.run(["nvidia-smi", "--query-gpu=memory.free", "--format=csv,noheader,nounits", "-i", gpu],
                                capture_output=True, text=True, timeout=30).stdout.strip()
        return int(answer) / 1024
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return None


def gpu_slots(gpus, per_gpu, gb):
    """The GPU of every slot, round robin: per_gpu on each GPU, fewer where its free memory holds fewer
    runs of `gb` GB; CommandError where one holds none."""
    per = {}
    for gpu in gpus:
        free, per[gpu] = free_gb(gpu), per_gpu
        if free is None:
            print(f"GPU {gpu}: free memory unknown (no answer from nvidia-smi): not checked", file=sys.stderr)
            continue
        fits = int(free // gb)
        if fits == 0:
            raise CommandError(f"GPU {gpu} has {int(free)} GB free and a run takes about {gb} GB: free it, leave it "
                               f"out of CUDA_VISIBLE_DEVICES, or set --gpu-gb", status=1)
        if fits < per_gpu:
            print(f"GPU {gpu}: {int(free)} GB free, about {gb} GB a run (--gpu-gb): {fits} at a time instead of "
                  f"{per_gpu}", file=sys.stderr)
            per[gpu] = fits
    return [gpu for round_ in range(per_gpu) for gpu in gpus if round_ < per[gpu]]


def slot_cores(slot, slots):
    """The cores of slot `slot` of `slots` sharing this process's cores (its affinity mask)."""
    cores = sorted(os.sched_getaffinity(0))
    per = max(1, len(cores) // slots)
    return {cores[i % len(cores)] for i in range(slot * per, (slot + 1) * per)}

# -----------------------------------------------------------------------------
# running: the launcher owns its runs


def in_child(cores=None):
    """In a started process, before it runs: its cores, and its end with the launcher's (even by SIGKILL)."""
    if cores:
        os.sched_setaffinity(0, cores)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Runner:
    """Starts runs in slots, waits for them, and on a stop signal passes it on to every run it
    started, starts nothing more and returns once they have stopped."""

    def __init__(self, slots, log_dir=None, family="runs"):
        self.slots, self.log_dir, self.family = slots, log_dir, family  # slots: [(gpu or None, cores or None)]
        self.running = {}  # slot -> (Popen, index)
        self.stopped, self.asked, self.told = None, 0, {}  # the first stop signal, how many came, pid -> passed on

    def _stop(self, signum, frame):
        self.stopped, self.asked = self.stopped or signum, self.asked + 1
        self.pass_on()

    def pass_on(self):
        """Gives every run the stop signals that came (a second one stops train.py at once), also a run
        started while the first arrived. train.py pauses at a safe point on SIGINT and SIGTERM; a
        hang-up means the same here."""
        forward = signal.SIGINT if self.stopped == signal.SIGINT else signal.SIGTERM
        for process, _ in list(self.running.values()):
            while self.told.get(process.pid, 0) < self.asked:
                self.told[process.pid] = self.told.get(process.pid, 0) + 1
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(forward)

    def log_path(self, index):
        return self.log_dir / f"{self.family}_{index + 1}.log" if self.log_dir else None

    def start(self, slot, argv, index):
        gpu, cores = self.slots[slot]
        env = dict(os.environ, **({"CUDA_VISIBLE_DEVICES": gpu} if gpu is not None else {}))

        log = open(self.log_path(index), "w") if self.log_dir else None
        try:  # its own process group: a Ctrl-C at the terminal reaches it once, through the launcher
            return subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT if log else None,
                                    preexec_fn=lambda: in_child(cores), process_group=0)
        except OSError as e:  # no such interpreter: the run fails as a shell's would
            print(f"cannot start {argv[0]}: {e}", file=log or sys.stderr, flush=True)
            return None
        finally:
            if log:
                log.close()

    def run(self, commands, keep_going, on_start=None, on_end=None):
        """Runs `commands` in order in the free slots and returns {index: exit status}. A command is an argv,
        or a function that gives it when its turn comes (None: nothing to run). on_start(index, slot, argv)
        and on_end(index, status) report."""
        previous = {s: signal.signal(s, self._stop) for s in STOP_SIGNALS
                    if signal.getsignal(s) is not signal.SIG_IGN}  # nohup's SIGHUP stays ignored
        statuses, upcoming = {}, iter(range(len(commands)))
        index = next(upcoming, None)

        def finished(i, status):
            nonlocal index
            statuses[i] = status if status >= 0 else 128 - status  # killed by a signal: as shells report it
            if on_end:
                on_end(i, statuses[i])
            if statuses[i] and not keep_going:
                index = None  # start nothing more; the runs going on finish

        try:
            while index is not None or self.running:
                for slot in range(len(self.slots)):
                    if index is None or self.stopped:
                        break
                    if slot in self.running:
                        continue
                    i, argv = index, commands[index]() if callable(commands[index]) else commands[index]
                    index = next(upcoming, None)
                    if argv is None:
                        statuses[i] = 0
                        continue
                    if on_start:
                        on_start(i, slot, argv)
                    process = self.start(slot, argv, i)
                    if process is None:
                        finished(i, 127)
                    else:
                        self.running[slot] = (process, i)
                time.sleep(0.2)
                for slot, (process, i) in list(self.running.items()):
                    if process.poll() is not None:
                        del self.running[slot]
                        finished(i, process.returncode)
                if self.stopped:
                    index = None
                    self.pass_on()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        return statuses


def make_slots(args, parsed):
    """([(gpu, cores)] of the slots where runs go at once, the visible GPUs); one slot takes what the launcher has."""
    gpus = visible_gpus()
    if gpus and (args.per_gpu > 1 or len(gpus) > 1):
        slot_gpus = gpu_slots(gpus, args.per_gpu, args.gpu_gb or run_gpu_gb(parsed))
    elif gpus:
        slot_gpus = [None]  # one GPU, one run: nothing to share
    else:
        slot_gpus = [None] * args.per_gpu
    if len(slot_gpus) == 1:
        return [(None, None)], gpus
    return [(gpu, slot_cores(k, len(slot_gpus))) for k, gpu in enumerate(slot_gpus)], gpus


def cores_text(cores):
    return ",".join(map(str, sorted(cores))) if cores else ""


def run_commands(args, commands, parsed, runs_root, family, prepare=None):
    """Runs the commands here: one after another with their output on the terminal, or several at
    once with each one's output in <runs root>/logs/. Returns the exit status for the launcher."""
    slots, gpus = make_slots(args, parsed)
    keep_going = args.keep_going or args.slice
    n, shown = len(commands), [shlex.join(argv) for argv in commands]
    log_dir = None
    if len(slots) > 1 or args.slice:
        log_dir = Path(runs_root) / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        print(f"{n} runs, {args.per_gpu} at a time on each of: {' '.join(gpus) or 'the CPU'}; logs in {log_dir}/")
    runner, failed, prog = Runner(slots, log_dir, family), [], args.prog

    def started(i, slot, argv):
        gpu, cores = slots[slot]
        where = (f" on GPU {gpu}" if gpu is not None else "") + (f" on cores {cores_text(cores)}" if cores else "")
        print(f"[{i + 1}/{n}] {'started' + where + ': ' if log_dir else ''}{shlex.join(argv)}", flush=True)

    def ended(i, status):
        if status:
            log = f" (log: {runner.log_path(i)})" if log_dir else ""
            print(f"{prog}: error: run {i + 1}/{n} failed (exit status {status}): {shown[i]}{log}",
                  file=sys.stderr, flush=True)
            failed.append(shown[i])
        elif log_dir:
            print(f"[{i + 1}/{n}] done", flush=True)

    statuses = runner.run([prepare(i) if prepare else argv for i, argv in enumerate(commands)], keep_going,
                          started, ended)
    if log_dir:
        logs = [runner.log_path(i) for i in statuses if runner.log_path(i).is_file()]
        eager = [log for log in logs if "CUDA graph capture failed" in log.read_text(errors="replace")]
        if eager:
            print(f"{len(eager)} of {n} runs trained with eager steps, their CUDA graph capture failed (why: the "
                  f"warning in each log, and cuda_graph in the run's config.json):")
            print("\n".join(f"  {log}" for log in eager))
    if runner.stopped:
        print(f"{prog}: stopped by {signal.Signals(runner.stopped).name}: every run it started has paused "
              f"or ended; the same command resumes them", file=sys.stderr)
        return 128 + runner.stopped
    if failed and len(slots) == 1 and not keep_going:
        return next(s for s in statuses.values() if s)  # one at a time: the failed run's own status
    if failed:
        print(f"{prog}: error: {len(failed)} of {n} runs failed:", file=sys.stderr)
        print("\n".join(f"  {cmd}" for cmd in failed), file=sys.stderr)
        return 1
    print(f"all {n} runs done")
    return 0

# -----------------------------------------------------------------------------
# SLURM


def write_array(args, commands, runs_root, family):
    """Writes the commands file and a job array script whose task i runs lines N i + 1 .. N (i + 1) of
    it at once (N = --per-gpu), through this launcher; submits it unless --dry-run."""
    n, per = len(commands), args.per_gpu
    tasks = (n + per - 1) // per
    slurm_dir = (Path(runs_root) / "slurm").resolve()
    (slurm_dir / "logs").mkdir(parents=True, exist_ok=True)  # SLURM does not create the log folder itself
    # The process id keeps two submissions in one second apart: tasks read their file late.
    stem = f"{slurm_dir}/{family}_{datetime.now():%Y%m%d-%H%M%S}_{os.getpid()}"
    commands_file, sbatch = Path(f"{stem}.commands"), Path(f"{stem}.sbatch")
    options = dict(job_name=family, array=f"0-{tasks - 1}" + (f"%{args.max_parallel}" if args.max_parallel else ""),
                   output=f"{slurm_dir}/logs/%A_%a.out", partition=args.partition, time=args.time,
                   gres=None if args.gpus == 0 else f"gpu:{args.gpus or 1}", cpus_per_task=args.cpus, mem=args.mem,
                   account=args.account)
    directives = [f"#SBATCH --{k.replace('_', '-')}={v}" for k, v in options.items() if v is not None]
    runs.save_text("".join(shlex.join(argv) + "\n" for argv in commands), commands_file)
    runs.save_text("\n".join([
        "#!/usr/bin/env bash", *directives,
        f"# Task i runs lines {per} i + 1 .. {per} (i + 1) of the commands file at once, from the repository root,",
        "# through launch.py, which passes a stop signal on to them; it fails if one of them fails.",
        f"cd {shlex.quote(str(REPO))}",
        f"exec {shlex.quote(sys.executable)} launch.py --commands {shlex.quote(str(commands_file))} "
        f"--per-gpu {per} --array-task \"$SLURM_ARRAY_TASK_ID\"", ""]), sbatch)
    if args.dry_run:
        print(f"wrote {stem}.commands ({n} runs, {tasks} array tasks) and {sbatch}; not submitted (--dry-run):\n")
        print(sbatch.read_text(), end="")
        return 0
    try:
        return subprocess.run(["sbatch", str(sbatch)]).returncode
    except FileNotFoundError:
        print(f"{args.prog}: error: sbatch not found on PATH. Wrote {stem}.commands ({n} runs) and {sbatch}; submit "
              f"them where SLURM is available with: sbatch {sbatch}", file=sys.stderr)
        return 1


def run_array_task(args, commands):
    """SLURM array task --array-task: its --per-gpu lines of the commands file, all at once."""
    first = args.array_task * args.per_gpu
    mine = commands[first:first + args.per_gpu]
    if not mine:
        raise CommandError(f"array task {args.array_task} has no lines: the file holds {len(commands)}")
    for line in mine:
        print(shlex.join(line), flush=True)
    slots = [(None, slot_cores(k, len(mine)) if len(mine) > 1 else None) for k in range(len(mine))]
    statuses = Runner(slots).run(mine, keep_going=True)
    return max(statuses.values())

# -----------------------------------------------------------------------------
# time slices


def create_data(args, datasets, names_to_check=True):
    """Creates `datasets` where missing under the data root (all of them printed, not run, with --dry-run),
    then checks them (each of them, or with names_to_check=False every dataset there). Returns what went
    wrong, "" when nothing did."""
    data_root = settings.data_root(args.data_root)
    root = [] if args.data_root is None else ["--data-root", args.data_root]  # else the data scripts' own default

    def step(argv):
        print(shlex.join(argv), flush=True)
        return 0 if args.dry_run else subprocess.run(argv, cwd=REPO, preexec_fn=in_child).returncode

    made = set()
    # the offline datasets first, so that they exist even where the MNIST download fails
    for name in sorted(datasets, key=lambda name: name == "mnist" or name in CREATED_FROM_MNIST):
        if not args.dry_run and (data_root / get_info(name, data_root).folder / "dataset.json").is_file():
            continue  # made before: checked below
        for needed in (CREATED_FROM_MNIST.get(name), name):
            if needed is None or needed in made:
                continue
            made.add(needed)
            script = shlex.split(get_info(needed).create_command)[1:]  # "python data_scripts/..." -> its script
            mnist = ["--from-dir", args.mnist_from_dir] if args.mnist_from_dir and needed == "mnist" else []
            if step([args.python, *script, *root, *mnist]):
                return f"creating {needed} failed"
    if step([args.python, "data_scripts/verify_datasets.py", *(datasets if names_to_check else []), *root]):
        return "the data differs from what it should be"
    return ""


def touched_runs(runs_root, since):
    """The run directories under `runs_root` with a file written since `since`."""
    return [run for run in runs.find_runs(runs_root)
            if any(p.is_file() and p.stat().st_mtime >= since for p in run.rglob("*"))]


def describe(run):
    """"<run>: 3/20 epochs, in progress" (or finished)."""
    try:
        config = runs.load_json(run / runs.CONFIG)
        epochs = len(runs.load_metrics(run))
    except (runs.DamagedFile, OSError) as e:
        return f"{run}: {e}"
    state = "finished" if runs.is_finished(run) else "in progress"
    return f"{run}: {epochs}/{config.get('epochs', '?')} epochs, {state}"


def pack(archive, runs_root, run_dirs, part_mb):
    """The runs and the runs' logs as ARCHIVE.tar.gz.part-aa, -ab, ... of at most part_mb MB each (as split
    names them); the old parts are replaced only once the new archive is whole."""
    prefix, size = Path(f"{archive}.tar.gz.part-"), part_mb * 2**20
    prefix.parent.mkdir(parents=True, exist_ok=True)
    whole = Path(f"{archive}.tar.gz.partial")
    with tarfile.open(whole, "w:gz") as tar:
        for path in [*run_dirs, runs_root / "logs"]:
            if path.exists():
                tar.add(path, arcname=str(path.relative_to(runs_root)))
    for old in prefix.parent.glob(prefix.name + "*"):
        old.unlink()
    with open(whole, "rb") as f:
        for k, chunk in enumerate(iter(lambda: f.read(size), b"")):
            part = Path(f"{prefix}{chr(97 + k // 26)}{chr(97 + k % 26)}")
            part.write_bytes(chunk)
            print(f"{part}  {len(chunk)} bytes")
    whole.unlink()
    print(f"unpack with: cat {prefix}* | tar xzf - -C {runs_root}")


def run_slice(args, commands, parsed, family):
    runs_root = Path(args.runs_root or "results/runs")
    data_root = settings.data_root(args.data_root)
    failed = create_data(args, sorted({a.dataset for a in parsed}))
    if failed:
        print(f"{args.prog}: error: {failed}: nothing was trained", file=sys.stderr)
        return 1
    runs_root.mkdir(parents=True, exist_ok=True)
    since = time.time() - 1  # file times are coarser than the clock
    slice_end = time.monotonic() + 60 * args.minutes
    where = ["--runs-root", str(runs_root), "--data-root", str(data_root)]
    min_start = 5 if args.min_start is None else args.min_start

    def prepare(i):
        if not args.queue:
            return commands[i] + where + ["--stop-after-minutes", f"{args.minutes:g}", "--no-progress"]

        def when_its_turn_comes():
            left = slice_end - time.monotonic()
            if left < 60 * min_start:
                print(f"not started, under {min_start:g} minutes of the slice left: {shlex.join(commands[i])}",
                      flush=True)
                return None
            return commands[i] + where + ["--no-progress", "--stop-after-minutes", f"{max(left / 60, 0.1):.1f}"]
        return when_its_turn_comes

    status = run_commands(args, commands, parsed, runs_root, family, prepare)
    touched = touched_runs(runs_root, since)
    for run in touched:
        print(describe(run))
    if args.archive and touched:
        pack(args.archive, runs_root, touched, args.part_mb or 15)
    return status


def main(argv=None):
    sys.stdout.reconfigure(line_buffering=True)
    parser, args, extra = parse_args(sys.argv[1:] if argv is None else argv)
    args.prog, args.python = parser.prog, args.python or default_python()
    os.chdir(REPO)  # train.py's relative paths (./data, ./runs) are the repository's
    family = family_name(args)
    try:
        if args.create_data:  # the paper's datasets
            failed = create_data(args, list(dict.fromkeys(d for d, _ in GRID)), names_to_check=False)
            if failed:
                print(f"{parser.prog}: error: {failed}", file=sys.stderr)
            return 1 if failed else 0
        commands_parsed = make_commands(args, extra)
        commands, parsed = [c for c, _ in commands_parsed], [p for _, p in commands_parsed]
        runs_root = settings.runs_root(parsed[0].runs_root)
        if args.shell_settings:
            shell = dict(dry_run=int(args.dry_run), slurm=int(args.slurm), keep_going=int(args.keep_going),
                         python=args.python, runs_root=parsed[0].runs_root or "", data_root=parsed[0].data_root or "")
            print("\n".join(f"{k}={shlex.quote(str(v))}" for k, v in shell.items()))
            return 0
        if args.array_task is not None:
            return run_array_task(args, commands)
        if args.slurm:
            return write_array(args, commands, runs_root, family)
        if args.dry_run:
            print("\n".join(shlex.join(argv) for argv in commands))
            return 0
        if args.slice:
            return run_slice(args, commands, parsed, family)
        return run_commands(args, commands, parsed, runs_root, family)
    except CommandError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return e.status
    except BrokenPipeError:  # the reader went away (--dry-run | head): stop quietly, as a shell tool does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
