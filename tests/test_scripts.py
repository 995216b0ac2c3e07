"""launch.py and the scripts on it. Most tests call launch.main in this process with a fake interpreter
that records how it was called (nothing is trained); a few start real processes: a family script, SLURM
tasks, the stop signals, and time slices of tiny training runs."""
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest

import launch
import train
from configs import GRID
from conftest import FAST, REPO
from dataset_config import get_info

SCRIPTS = REPO / "scripts"
DATA_STEPS = ["create_tetrominoes.py", "create_polygons.py", "download_mnist.py", "create_multi_mnist.py",
              "verify_datasets.py"]  # creating and checking the four datasets, the offline ones first


@pytest.fixture
def launched(tmp_path, monkeypatch, capsys):
    """launched(*argv): (exit status, stdout, stderr) of launch.main(argv) in this process, usage errors
    included, with the runs root in tmp_path/runs and no GPU unless a test gives one."""
    monkeypatch.setenv("WAVES_RUNS_ROOT", str(tmp_path / "runs"))
    monkeypatch.delenv("WAVES_DATA_ROOT", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.chdir(tmp_path)  # the launcher changes to the repository root: restored afterwards

    def launch_main(*argv):
        capsys.readouterr()
        try:
            status = launch.main(list(argv))
        except SystemExit as e:
            status = e.code
        out = capsys.readouterr()
        return status, out.out, out.err
    return launch_main


def parse(line):
    """A printed command -> (interpreter, train.py's parsed arguments); fails unless argparse accepts it."""
    argv = shlex.split(line)
    assert argv[1] == "train.py", line
    return argv[0], train.build_parser().parse_args(argv[2:])


def executable(path, text):
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def fake_python(tmp_path, fail_on=None, line="$(pwd) $*"):
    """An interpreter that logs `line` (default: its working directory and arguments) to calls.log, failing
    with status 3 when its arguments contain `fail_on`."""
    fail = f'case "$*" in *"{fail_on}"*) exit 3 ;; esac\n' if fail_on else ""
    return executable(tmp_path / "python", f'#!/bin/sh\necho "{line}" >> "{tmp_path}/calls.log"\n{fail}')


def calls(tmp_path):
    path = tmp_path / "calls.log"
    return path.read_text().splitlines() if path.exists() else []


def commands_file(tmp_path, *lines):
    (tmp_path / "commands.txt").write_text("".join(line + "\n" for line in lines))
    return tmp_path / "commands.txt"


def bash(script, *args, cwd, env=None):
    return subprocess.run(["bash", SCRIPTS / script, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)

# -----------------------------------------------------------------------------
# the grid (configs.GRID, which the family scripts run) and the options


def test_every_family_script_runs_its_grid_entry():
    scripts = {str(p.relative_to(SCRIPTS)) for p in SCRIPTS.rglob("*.sh")}
    families = {f"{dataset}/{model}" for dataset, model in GRID}
    assert scripts == {f"{f}.sh" for f in families} | {"lib.sh", "create_data.sh", "run_all.sh", "advance_runs.sh",
                                                       "gpu_check.sh"}
    assert all(os.access(SCRIPTS / script, os.X_OK) for script in scripts - {"lib.sh"})  # lib.sh is sourced
    for family in families:
        assert f'launch --grid {family} "$@"' in (SCRIPTS / f"{family}.sh").read_text()


def test_tetrominoes_nwm_prints_the_same_50_commands(tmp_path):
    result = bash("tetrominoes/nwm.sh", "--dry-run", cwd=tmp_path)  # from any working directory
    python = ".venv/bin/python" if os.access(REPO / ".venv/bin/python", os.X_OK) else "python3"
    readouts = ["linear", "fft", "last", "mean_time", "max_time"]
    assert result.stdout.splitlines() == [f"{python} train.py --dataset tetrominoes --model nwm --readout {r} "
                                          f"--seed {s}" for s in range(10) for r in readouts]


def test_seeds_extra_args_and_python_reach_every_command(launched):
    status, out, _ = launched("--grid", "mnist/cnn", "--dry-run", "--seeds", "08", "--python",
                              "/opt/py/bin/python", "--", "--epochs", "50", "--train-size", "2000")
    lines = out.splitlines()
    assert status == 0 and len(lines) == 5 * 8  # --seeds 08 is eight seeds, not an error
    assert all(parse(line)[0] == "/opt/py/bin/python" and line.endswith(" --epochs 50 --train-size 2000")
               for line in lines)  # last: they win over the grid's
    status, out, _ = launched("--config", "--dataset mnist --model nwm", "--config", "--dataset polygons",
                              "--seeds", "2", "--dry-run")
    assert status == 0 and [(a.dataset, a.seed) for _, a in map(parse, out.splitlines())] == [
        ("mnist", 0), ("polygons", 0), ("mnist", 1), ("polygons", 1)]


GRID_OPTION = ["--grid", "tetrominoes/nwm"]


@pytest.mark.parametrize("args, message", [
    (GRID_OPTION + ["--bogus"], "unknown option '--bogus'; train.py flags go after --"),
    (GRID_OPTION + ["--seeds"], "--seeds: expected one argument"),
    (GRID_OPTION + ["--seeds", "two"], "must be a whole number"),
    (GRID_OPTION + ["--seeds", "99999"], "must be at most 100"),
    (GRID_OPTION + ["--seeds", "0"], "must be at least 1"),
    (GRID_OPTION + ["--per-gpu", "-1"], "--per-gpu: must be at least 1"),
    (GRID_OPTION + ["--seed", "3"], "unknown option '--seed'"),  # not taken for --seeds
    (GRID_OPTION + ["--partition", "gpu"], "--partition needs --slurm"),
    (GRID_OPTION + ["--minutes", "5"], "--minutes needs --slice"),
    (GRID_OPTION + ["--slice"], "--minutes is required"),
    (GRID_OPTION + ["--config", "--dataset mnist"], "give one source of commands"),
    (["--config", "--dataset mnist"], "--config needs --seeds"),
    (["commands.txt", "--seeds", "2"], "--seeds is for --grid and --config"),
    (["commands.txt", "more.txt"], "one COMMANDS_FILE only, not also 'more.txt'"),
    (["--slice", "--minutes", "3", "--grid", "mnist/cnn"], "a slice or a SLURM task runs a commands file"),
    (["commands.txt", "--slice", "--queue", "--minutes", "3"], "--min-start 5 is not under --minutes 3"),
    (["commands.txt", "--slice", "--minutes", "1", "--min-start", "30"], "--min-start applies to --queue only"),
    (["commands.txt", "--slice", "--minutes", "9", "--min-start", "5"], "--min-start applies to --queue only"),
    (["commands.txt", "--slice", "--minutes", "1", "--archive", "python/out/runs"],  # fake_python's file
     "python is a file, not a folder; name a PREFIX in a folder"),
    (GRID_OPTION + ["--grid=mnist/cnn"], "--grid given 2 times; run the script of the family you want"),
    (["--create-data", "--seeds", "1"], "--seeds means nothing to --create-data"),
    (["--create-data", "--", "--epochs", "3"], "train.py ARGS means nothing to --create-data"),
])
def test_bad_options_are_refused_before_any_work(args, message, launched, tmp_path):
    status, out, err = launched("--python", str(fake_python(tmp_path)), *args)
    assert status == 2 and out == "" and message in err.splitlines()[0] and len(err.splitlines()) == 2
    assert calls(tmp_path) == []


def test_help_shows_the_script_and_the_shared_options(launched):
    status, out, _ = launched("--script", str(SCRIPTS / "multi_mnist" / "unet.sh"), "--help")
    assert status == 0 and "U-Net baseline" in out
    for option in ["--dry-run", "--seeds N", "--keep-going", "--per-gpu N", "--slurm", "--max-parallel N", "-- ARGS"]:
        assert option in out

# -----------------------------------------------------------------------------
# commands files


def test_a_commands_file_is_read_with_shell_rules(launched, tmp_path):
    commands = commands_file(tmp_path, "# a comment", "", "py train.py --dataset mnist --seed 1  # a note at the end",
                             "py train.py --dataset mnist --run-name 'with space' --seed 2")
    status, out, _ = launched(str(commands), "--dry-run", "--", "--runs-root", "R", "--epochs", "3")
    parsed = [parse(line)[1] for line in out.splitlines()]
    runs_root = str(tmp_path / "R")  # read from where the launcher started, as its own paths are
    assert status == 0 and [(a.seed, a.runs_root, a.epochs) for a in parsed] == [(1, runs_root, 3), (2, runs_root, 3)]
    assert parsed[1].run_name == "with space"


def test_train_py_paths_after_the_double_dash_are_read_from_where_the_launcher_started(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO / "docs")  # inside the repository: a path there stays relative to its root
    _, extra = launch.parse_args(["c.txt", "--", "--runs-root", "../my_runs", f"--data-root={tmp_path}/d", "--resume",
                                  "r/run", "--epochs", "3", "--run-name", "x"])
    assert extra == ["--runs-root", "my_runs", f"--data-root={tmp_path}/d", "--resume", "docs/r/run", "--epochs", "3",
                     "--run-name", "x"]  # a run name is no path


def test_python_replaces_the_interpreter_of_a_commands_files_lines(launched, tmp_path, monkeypatch):
    commands = commands_file(tmp_path, ".venv/bin/python train.py --seed 1", "py train.py --seed 2")

    def interpreters(*options):
        monkeypatch.chdir(tmp_path)  # started here (the launcher moves to the repository root)
        status, out, _ = launched(str(commands), "--dry-run", *options)
        assert status == 0
        return [parse(line)[0] for line in out.splitlines()]
    assert interpreters() == [".venv/bin/python", "py"]  # each line's own
    assert interpreters("--python", "python3") == ["python3", "python3"]  # a name, looked up on PATH
    assert interpreters("--python", "env/bin/python") == [str(tmp_path / "env/bin/python")] * 2  # a path, from here


@pytest.mark.parametrize("line, message", [
    ("py train.py --seed 'unclosed", "line 2: cannot read it (No closing quotation)"),
    ("rm -rf /tmp/x", "line 2: not a train.py command"),
    ("py train.py --dataset nope", "line 2: train.py would refuse it (--dataset: unknown dataset 'nope'"),
    ("py train.py --data-root $HOME/data", "line 2: '$HOME/data' would not be expanded here"),
    ("py train.py --data-root ~/data", "line 2: '~/data' would not be expanded here"),
    ("CUDA_VISIBLE_DEVICES=1 py train.py", "line 2: not a train.py command"),
    ("py train.py --seed 0 > log", "line 2: train.py would refuse it (unrecognized arguments: > log)"),
    ("py train.py --run-name ../x", "line 2: train.py would refuse it (--run-name '../x': a run name is a relative"),
    ("py train.py --epochs 5  # the same run with another budget", "line 2 and "),
])
def test_a_bad_line_is_refused_with_its_number_before_anything_runs(line, message, launched, tmp_path):
    commands = commands_file(tmp_path, f"{fake_python(tmp_path)} train.py --seed 0", line)
    status, _, err = launched("--commands", str(commands))
    assert status == 2 and f"{commands} {message}" in err and calls(tmp_path) == []


@pytest.mark.parametrize("content, message", [(b"\xff\xfe\x00binary", "cannot read {} as a text file of commands"),
                                              (b"# nothing but a comment\n", "{} holds no command")])
def test_a_file_that_is_not_text_is_refused(content, message, launched, tmp_path):
    (tmp_path / "commands.txt").write_bytes(content)
    status, _, err = launched(str(tmp_path / "commands.txt"), "--dry-run")
    assert status == 2 and message.format(tmp_path / "commands.txt") in err


def test_two_commands_on_one_run_directory_are_refused(launched, tmp_path):
    status, _, err = launched("--grid", "tetrominoes/cnn", "--seeds", "1", "--dry-run", "--", "--run-name", "mine")
    assert status == 2 and f"command 2 and command 1 both train the run {tmp_path}/runs/mine" in err
    assert launched("--grid", "tetrominoes/cnn", "--seeds", "1", "--dry-run")[0] == 0  # the paper's names


def test_a_dry_run_into_a_closed_pipe_stops_quietly():
    dry = subprocess.Popen([sys.executable, "launch.py", "--grid", "tetrominoes/nwm", "--seeds", "100", "--dry-run"],
                           cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    dry.stdout.close()  # as `| head -1` does once it has its line
    assert dry.wait(timeout=120) == 141 and "Traceback" not in dry.stderr.read()

# -----------------------------------------------------------------------------
# running here: in order, at once on the CPU's cores, packed on GPUs by their memory


def test_runs_go_in_order_from_the_repo_root(launched, tmp_path):
    python = fake_python(tmp_path)
    _, dry, _ = launched("--grid", "tetrominoes/cnn", "--seeds", "2", "--python", str(python), "--dry-run")
    status, out, _ = launched("--grid", "tetrominoes/cnn", "--seeds", "2", "--python", str(python))
    assert status == 0 and calls(tmp_path) == [f"{REPO} {line.split(' ', 1)[1]}" for line in dry.splitlines()]
    assert out.endswith("all runs paused or finished\n") and "done" not in out  # they wrote no finished run


@pytest.mark.parametrize("fail_on, options, status, started, message", [
    ("--seed 1", [], 3, 3, "run 3/6 failed (exit status 3)"),  # the failed run's status; nothing more started
    ("--seed 1", ["--keep-going"], 1, 6, "2 of 6 runs failed:\n  "),  # all of them, then the failures listed
    ("--seed 0", ["--per-gpu", "2"], 1, 2, "2 of 6 runs failed"),  # two at once: both failed, nothing more
])
def test_a_failed_run_stops_the_grid_unless_keep_going(fail_on, options, status, started, message, launched,
                                                      tmp_path):
    python = fake_python(tmp_path, fail_on=fail_on)
    result = launched("--grid", "mnist/lstm", "--seeds", "3", "--python", str(python), *options)
    assert result[0] == status and len(calls(tmp_path)) == started and message in result[2]


def test_a_missing_interpreter_fails_its_run(launched, tmp_path):
    status, _, err = launched("--grid", "mnist/lstm", "--seeds", "1", "--python", str(tmp_path / "nope"))
    assert status == 127 and "cannot start" in err


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores")
def test_runs_on_the_cpu_each_get_their_share_of_the_cores(launched, tmp_path):
    python = fake_python(tmp_path, line="$(grep Cpus_allowed_list /proc/self/status | cut -f2) $*")
    status, out, _ = launched("--grid", "mnist/lstm", "--seeds", "1", "--per-gpu", "2", "--python", str(python))
    assert status == 0 and "2 runs, 2 at a time on each of: the CPU" in out
    pinned = [launch.slot_cores(k, 2) for k in range(2)]
    allowed = [{core for part in line.split()[0].split(",") for a, _, b in [part.partition("-")]  # "0-2,5"
                for core in range(int(a), int(b or a) + 1)} for line in calls(tmp_path)]
    assert sorted(map(sorted, allowed)) == sorted(map(sorted, pinned)) and pinned[0].isdisjoint(pinned[1])
    assert sorted(p.name for p in (tmp_path / "runs" / "logs").glob("*.log")) == [  # each run's output in its log
        "mnist_lstm-fft-T20-h2-seed0.log", "mnist_lstm-linear-T20-h2-seed0.log"]


@pytest.mark.parametrize("data", ["small", "none"])
def test_a_runs_gpu_memory_is_its_estimate_on_its_data_with_headroom(data, small_tetrominoes, tmp_path):
    root = small_tetrominoes if data == "small" else tmp_path  # split sizes: its dataset.json's, else the paper's
    command = launch.check_command(["py", "train.py", "--dataset", "tetrominoes", "--data-root", str(root)], "here")
    sizes = dict(train=20, val=5, test=5) if data == "small" else dict(train=10_000, val=1_000, test=1_000)
    needed, _, _ = train.memory_needed(command.args, get_info("tetrominoes"), sizes)
    assert launch.run_gb(command) == launch.GPU_HEADROOM * needed / 2**30


def fake_nvidia_smi(tmp_path, monkeypatch, free_gb):
    """An nvidia-smi that lists GPUs 0 and 1, each with `free_gb` GB free."""
    mib = round(free_gb * 1024)
    executable(tmp_path / "bin" / "nvidia-smi", f"#!/bin/sh\nprintf '0, {mib}\\n1, {mib}\\n'\n")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_per_gpu_packs_no_more_runs_than_the_gpu_memory_holds(launched, tmp_path, monkeypatch):
    _, args, info = train.parse(["--dataset", "multi_mnist", "--model", "nwm"])
    needed, _, _ = train.memory_needed(args, info, dict(zip(info.splits, info.paper_split_sizes)))
    assert launch.GPU_HEADROOM == math.ceil(28 * 2**30 / needed)  # the 28 GB it was measured to take on a GPU
    run_gb = launch.GPU_HEADROOM * needed / 2**30
    monkeypatch.setenv("WAVES_DATA_ROOT", str(tmp_path / "no data"))  # the paper's split sizes
    grid = ["--grid", "multi_mnist/nwm", "--seeds", "4", "--per-gpu", "4", "--python",
            str(fake_python(tmp_path, line="${CUDA_VISIBLE_DEVICES} $*"))]
    fake_nvidia_smi(tmp_path, monkeypatch, 2.5 * run_gb)  # two runs on each GPU
    status, out, err = launched(*grid)
    assert status == 0 and "2 at a time instead of 4" in err and "4 at a time on each of: 0 1" in out
    assert re.findall(r"started on GPU (\d)", out) == ["0", "1", "0", "1"]  # round robin
    assert sorted(line.split()[0] for line in calls(tmp_path)) == ["0", "0", "1", "1"]
    (tmp_path / "calls.log").unlink()
    fake_nvidia_smi(tmp_path, monkeypatch, 0.9 * run_gb)  # not even one: refused, nothing started
    status, _, err = launched(*grid)
    assert status == 1 and f"GB free and a run takes about {run_gb:.0f} GB" in err and calls(tmp_path) == []
    assert launched(*grid, "--gpu-gb", "8")[0] == 0  # unless told otherwise


def test_per_gpu_lists_the_runs_whose_cuda_graph_failed(launched, tmp_path, monkeypatch):
    python = executable(tmp_path / "python", """#!/bin/sh
case "$*" in *"--seed 0"*) echo "warning: CUDA graph capture failed (boom); training with eager steps" >&2 ;; esac
""")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    status, out, _ = launched("--grid", "mnist/lstm", "--seeds", "2", "--per-gpu", "2", "--python", str(python))
    assert status == 0 and "2 of 4 runs trained with eager steps, their CUDA graph capture failed" in out
    executable(tmp_path / "python", "#!/bin/sh\n")  # the next slice captures its graphs
    status, out, _ = launched("--grid", "mnist/lstm", "--seeds", "2", "--per-gpu", "2", "--python", str(python))
    assert status == 0 and "eager steps" not in out  # an earlier slice's warning is not this one's
    logs = {log.name: log.read_text() for log in (tmp_path / "runs" / "logs").glob("*.log")}
    assert len(logs) == 4 and all(text.count("=== ") == 2 for text in logs.values())  # each slice's output kept
    assert sum("CUDA graph capture failed" in text for text in logs.values()) == 2

# -----------------------------------------------------------------------------
# SLURM


def sbatch_file(runs_root):
    sbatch, = (runs_root / "slurm").glob("tetrominoes_cnn_*.sbatch")
    return sbatch


@pytest.mark.slow
def test_slurm_writes_a_job_array_whose_tasks_run_their_lines(launched, tmp_path, monkeypatch):
    executable(tmp_path / "bin" / "sbatch", f'#!/bin/sh\necho "$@" > "{tmp_path}/sbatch_args"\necho "Submitted 7"\n')
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    status, _, _ = launched("--grid", "tetrominoes/cnn", "--slurm", "--seeds", "2", "--python",
                            str(fake_python(tmp_path)), "--partition", "gpu", "--time", "02:00:00", "--gpus", "2",
                            "--cpus", "8", "--mem", "32G", "--account", "lab", "--max-parallel", "3", "--per-gpu", "3",
                            "--", "--epochs", "5")
    sbatch = sbatch_file(tmp_path / "runs")
    lines = sbatch.with_suffix(".commands").read_text().splitlines()
    assert status == 0 and (tmp_path / "sbatch_args").read_text().strip() == str(sbatch)
    assert len(lines) == 10 and all(parse(line)[1].epochs == 5 for line in lines)
    assert re.findall(r"^#SBATCH (\S+)$", sbatch.read_text(), re.M) == [
        "--job-name=tetrominoes_cnn", "--array=0-3%3", f"--output={tmp_path}/runs/slurm/logs/%A_%a.out",
        "--partition=gpu", "--time=02:00:00", "--gres=gpu:2", "--cpus-per-task=8", "--mem=32G", "--account=lab"]
    assert (tmp_path / "runs" / "slurm" / "logs").is_dir()
    for task, expected in ((1, lines[3:6]), (3, lines[9:])):  # 10 runs, 3 a task: 4 tasks
        (tmp_path / "calls.log").unlink(missing_ok=True)
        result = subprocess.run(["bash", str(sbatch)], env=dict(os.environ, SLURM_ARRAY_TASK_ID=str(task)),
                                cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert sorted(calls(tmp_path)) == sorted(f"{REPO} {line.split(' ', 1)[1]}" for line in expected)
    assert len(list((tmp_path / "runs" / "logs").glob("*.log"))) == 3  # task 1's three at once: a log each


def test_slurm_dry_run_defaults_and_a_missing_sbatch(launched, tmp_path, monkeypatch):
    runs_root = tmp_path / "elsewhere"
    status, out, _ = launched("--grid", "tetrominoes/cnn", "--slurm", "--dry-run", "--seeds", "1",
                              "--", f"--runs-root={runs_root}")
    sbatch = sbatch_file(runs_root)
    assert status == 0 and "not submitted (--dry-run)" in out and sbatch.read_text() in out
    assert re.findall(r"^#SBATCH (\S+)$", sbatch.read_text(), re.M) == [
        "--job-name=tetrominoes_cnn", "--array=0-4", f"--output={runs_root}/slurm/logs/%A_%a.out", "--gres=gpu:1"]
    monkeypatch.setenv("PATH", str(tmp_path))
    status, _, err = launched("--grid", "tetrominoes/cnn", "--slurm", "--seeds", "1")
    assert status == 1 and "sbatch not found" in err and f"sbatch {sbatch_file(tmp_path / 'runs')}" in err


def test_slurm_paths_with_spaces_are_quoted_for_sbatch_and_the_shell(launched, tmp_path, monkeypatch):
    runs_root = tmp_path / "with space"
    commands = commands_file(tmp_path, "py train.py --dataset tetrominoes --seed 0")
    (tmp_path / "my runs.txt").write_text(commands.read_text())  # the job's name: the file's
    status, _, _ = launched(str(tmp_path / "my runs.txt"), "--slurm", "--dry-run", "--mem", "8G",
                            "--", f"--runs-root={runs_root}")
    sbatch, = (runs_root / "slurm").glob("my runs_*.sbatch")
    assert status == 0 and re.findall(r"^#SBATCH (.+)$", sbatch.read_text(), re.M) == [  # sbatch reads "..." whole
        '--job-name="my runs"', "--array=0-0", f'--output="{runs_root}/slurm/logs/%A_%a.out"', "--gres=gpu:1",
        "--mem=8G"]
    monkeypatch.setenv("PATH", str(tmp_path))
    status, _, err = launched(str(tmp_path / "my runs.txt"), "--slurm", "--", f"--runs-root={runs_root} 2")
    pasted = err.split("submit them where SLURM is available with: ")[1].strip()
    unsubmitted, = (tmp_path / "with space 2" / "slurm").glob("my runs_*.sbatch")
    assert status == 1 and shlex.split(pasted) == ["sbatch", str(unsubmitted)]

# -----------------------------------------------------------------------------
# the datasets, the whole grid, the GPU check


def test_create_data_commands(launched):
    status, out, _ = launched("--create-data", "--dry-run", "--data-root", "/data/waves", "--mnist-from-dir",
                              "/dl/mnist", "--python", "py")
    assert status == 0 and out.splitlines() == [
        f"py data_scripts/{step} --data-root /data/waves" + " --from-dir /dl/mnist" * (step == "download_mnist.py")
        for step in DATA_STEPS]


def test_the_whole_grid_creates_the_data_runs_every_family_seeds_outermost_and_scores(launched, tmp_path):
    status, out, _ = launched("--grid", "all", "--dry-run", "--seeds", "2", "--python", "py",
                              "--", "--data-root", "/data/waves", "--runs-root", "/runs/waves")
    lines = out.splitlines()
    assert status == 0 and [line.split()[1] for line in lines[:5]] == [f"data_scripts/{s}" for s in DATA_STEPS]
    assert lines[-1] == "py produce_scores.py --runs-root /runs/waves --data-root /data/waves"
    expected = [(dataset, model, setting, value, seed) for (dataset, model), (setting, values, _) in GRID.items()
                for seed in range(2) for value in values]  # each family in turn, seeds outermost
    trained = [parse(line)[1] for line in lines[5:-1]]
    assert [(a.dataset, a.model, setting, getattr(a, setting), a.seed)
            for a, (_, _, setting, _, _) in zip(trained, expected, strict=True)] == expected
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing


def test_the_whole_grid_fails_when_scoring_fails(launched, tmp_path):
    python = fake_python(tmp_path, fail_on="produce_scores.py")
    status, _, err = launched("--grid", "all", "--seeds", "1", "--python", str(python), "--", "--data-root",
                              str(tmp_path / "data"))
    made = calls(tmp_path)
    assert len([c for c in made if " train.py " in c]) == sum(len(values) for _, values, _ in GRID.values())
    assert status == 1 and "produce_scores.py" in made[-1] and "scoring failed (its output above)" in err
    assert f"score the runs from {REPO} with: {python} produce_scores.py --data-root {tmp_path / 'data'}" in err


def test_environment_yml_matches_requirements():
    yaml = pytest.importorskip("yaml")
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip, = [d["pip"] for d in env["dependencies"] if isinstance(d, dict)]
    names = {re.split(r"[=<>]", d)[0] for d in conda + pip}
    assert env["name"] == "waves" and "python=3.11" in conda
    requirements = (REPO / "requirements.txt").read_text().splitlines()
    assert {re.split(r"[=<>]", line)[0] for line in requirements if line and not line.startswith("#")} <= names


def test_gpu_check_dry_run_lists_every_step_with_a_timeout_within_nine_minutes(tmp_path):
    result = bash("gpu_check.sh", "--dry-run", cwd=tmp_path)
    steps = re.findall(r"^  (\w+) +(\d+)s  ", result.stdout, re.MULTILINE)
    assert result.returncode == 0 and [name for name, _ in steps] == [
        "data", "cuda_tests", "resume", "graph_nwm", "graph_lstm", "graph_unet", "tf32", "bench", "per_gpu"]
    assert sum(int(seconds) for _, seconds in steps) < 9 * 60
    cpu = bash("gpu_check.sh", "--dry-run", "--device", "cpu", cwd=tmp_path).stdout
    assert re.findall(r"^  (\w+) .*skipped on the CPU: needs CUDA", cpu, re.M) == ["cuda_tests", "resume", "tf32"]
    # called by a path relative to elsewhere, which no longer leads to it once the script is in the repository root
    relative = subprocess.run(["bash", f"{REPO.name}/scripts/gpu_check.sh", "--help"], cwd=REPO.parent,
                              capture_output=True, text=True, timeout=60)
    assert relative.returncode == 0 and relative.stdout.startswith("Checks the GPU path")


def test_scripts_work_with_cdpath_set(tmp_path):
    # with CDPATH, `cd DIR` prints the folder it found, which went into lib.sh's $(cd ... && pwd)
    cdpath = dict(os.environ, CDPATH=f".:{tmp_path}/nonexistent")
    result = subprocess.run(["bash", f"{REPO.name}/scripts/create_data.sh", "--help"], cwd=REPO.parent, env=cdpath,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("usage: ") and "Creates the four" in result.stdout
    result = subprocess.run(["bash", "scripts/gpu_check.sh", "--dry-run"], cwd=REPO, env=cdpath,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("gpu_check on cuda: 9 steps"), result.stdout


def test_gpu_check_runs_every_step_with_the_python_named_from_the_caller_on_gpu_n_alone(tmp_path):
    """--python ./python is read from where the script was called; --device cuda:1 runs every step on the GPU that
    CUDA_VISIBLE_DEVICES=3,5 names second, as the only one the steps see (test_cuda.py takes the first)."""
    fake_python(tmp_path, line="${CUDA_VISIBLE_DEVICES-unset} $*")
    visible = dict(os.environ, CUDA_VISIBLE_DEVICES="3,5")
    result = bash("gpu_check.sh", "--python", "./python", "--device", "cuda:1", "--out", "out", cwd=tmp_path,
                  env=visible)
    assert result.returncode == 0 and result.stdout.count(" ok ") == 9, result.stdout + result.stderr
    made = calls(tmp_path)
    assert {line.split()[0] for line in made} == {"5"}  # every call of every step
    assert "-m pytest -q tests/test_cuda.py -k killed" in "\n".join(made)
    devices = [line.split("--device ")[1].split()[0] for line in made if "--device " in line]
    assert len(devices) == 5 and set(devices) == {"cuda"}  # three training steps and two benchmarks
    assert result.stdout.startswith("gpu_check on cuda:1 (CUDA_VISIBLE_DEVICES=5, seen as cuda)")
    assert (tmp_path / "out.tar.gz").is_file()


@pytest.mark.parametrize("options, visible, message", [
    (["--python", "nope/python"], None, f"no interpreter {{tmp_path}}/nope/python: give --python the path of one"),
    (["--device", "cuda:1"], "3", "--device cuda:1: CUDA_VISIBLE_DEVICES='3' shows 1 GPUs, and cuda:N counts from 0"),
])
def test_gpu_check_refuses_a_missing_python_or_gpu_before_any_step(options, visible, message, tmp_path):
    python = fake_python(tmp_path)
    env = dict(os.environ, **({} if visible is None else {"CUDA_VISIBLE_DEVICES": visible}))
    result = bash("gpu_check.sh", "--python", str(python), *options, "--out", "out", cwd=tmp_path, env=env)
    assert result.returncode == 2 and message.format(tmp_path=tmp_path) in result.stderr, result.stderr
    assert calls(tmp_path) == [] and not (tmp_path / "out").exists()

# -----------------------------------------------------------------------------
# time slices, and real processes: stop signals and slices of tiny runs


def test_a_slice_creates_the_missing_datasets_first_and_trains_nothing_when_that_fails(launched, tmp_path):
    python, data = fake_python(tmp_path, fail_on="create_multi_mnist"), str(tmp_path / "data")
    commands = commands_file(tmp_path, f"{python} train.py --dataset multi_mnist --model unet",
                             f"{python} train.py --dataset polygons")
    status, _, err = launched("--slice", str(commands), "--minutes", "5", "--data-root", data,
                              "--mnist-from-dir", "M", "--python", str(python), "--runs-root", str(tmp_path / "r"))
    assert status == 1 and "creating multi_mnist failed: nothing was trained" in err
    assert [line.split()[1:] for line in calls(tmp_path)] == [  # the offline one first
        ["data_scripts/create_polygons.py", "--data-root", data],
        ["data_scripts/download_mnist.py", "--data-root", data, "--from-dir", str(tmp_path / "M")],  # from the cwd
        ["data_scripts/create_multi_mnist.py", "--data-root", data]]


def test_a_slice_trains_nothing_on_data_that_differs(launched, writable_tetrominoes, tmp_path):
    (writable_tetrominoes / "tetrominoes" / "val_masks.npy").write_bytes(b"damaged")
    commands = commands_file(tmp_path, f"{fake_python(tmp_path)} train.py --dataset tetrominoes")
    status, _, err = launched("--slice", str(commands), "--minutes", "1", "--data-root", str(writable_tetrominoes),
                              "--python", sys.executable, "--runs-root", str(tmp_path / "r"))  # a real check
    assert status == 1 and "the data differs from what it should be: nothing was trained" in err
    assert calls(tmp_path) == []


def test_a_scripts_paths_are_named_from_where_it_was_called(tmp_path):
    commands_file(tmp_path, ".venv/bin/python train.py --dataset tetrominoes --model cnn --seed 0")
    result = bash("advance_runs.sh", "commands.txt", "--minutes", "1", "--runs-root", "r", "--data-root", "d",
                  "--dry-run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].endswith(
        f"--seed 0 --runs-root {tmp_path}/r --data-root {tmp_path}/d --no-progress --stop-after-minutes 1")


def test_a_slice_without_a_runs_root_uses_train_pys_not_the_shipped_runs(launched, tmp_path):
    commands = commands_file(tmp_path, ".venv/bin/python train.py --dataset tetrominoes --model cnn --seed 0")
    status, out, _ = launched("--slice", str(commands), "--minutes", "1", "--dry-run")
    assert status == 0 and f"--runs-root {tmp_path / 'runs'} " in out.splitlines()[-1]  # $WAVES_RUNS_ROOT here


def test_a_queue_shares_one_slice_among_its_runs_in_turn(launched, tmp_path):
    python = fake_python(tmp_path)
    options = ["--slice", "--queue", "--data-root", str(tmp_path / "data"), "--runs-root", str(tmp_path / "r")]
    slow = executable(tmp_path / "slow" / "python", (  # its first run takes 4 s; the data steps do nothing
        f'#!/bin/sh\n[ "$1" = train.py ] || exit 0\necho "$*" >> "{tmp_path}/slow.log"\n'
        f'case "$*" in *"--seed 0"*) sleep 4 ;; esac\n'))
    slow_commands = commands_file(tmp_path / "slow", *(f"py train.py --seed {seed}" for seed in range(3)))
    status, out, _ = launched(str(slow_commands), *options, "--python", str(slow), "--minutes", "0.1",
                              "--min-start", "0.05")
    assert status == 0 and out.count("not started, under 0.05 minutes of the slice left") == 2  # 6 s, 2 s left
    assert "all runs paused or finished, 2 not started" in out
    assert [line.split(" --runs-root")[0] for line in (tmp_path / "slow.log").read_text().splitlines()] == [
        "train.py --seed 0"]
    commands = commands_file(tmp_path, *(f"{python} train.py --seed {seed}" for seed in range(3)))
    # one after another, each with what is left
    status, out, _ = launched(str(commands), *options, "--python", str(python), "--minutes", "30")
    trained = [c for c in calls(tmp_path) if "train.py" in c]
    assert status == 0 and len(trained) == 3
    assert all(re.search(r"--no-progress --end-by-minutes (29|30)\.\d$", c) for c in trained), trained


def children(pid):
    return [int(child) for child in open(f"/proc/{pid}/task/{pid}/children").read().split()]


def alive(pid):
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except OSError:
        return False


def wait_for(condition, timeout, what):
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGKILL])
def test_a_stop_signal_stops_every_run_and_leaves_no_process(signum, tmp_path):
    """The fault of issue 37: `kill PID` of a slice left its train.py children running as orphans. Killed
    outright, the launcher cannot pass the signal on: the kernel sends each run SIGTERM (PR_SET_PDEATHSIG)."""
    python = executable(tmp_path / "python", f"""#!/bin/sh
trap 'echo "$$ TERM" >> "{tmp_path}/signals"; exit 143' TERM
trap 'echo "$$ INT" >> "{tmp_path}/signals"; exit 130' INT
echo $$ >> "{tmp_path}/ready"
while :; do sleep 0.1; done
""")
    commands = commands_file(tmp_path, *(f"{python} train.py --seed {seed}" for seed in range(3)))
    def as_from_a_terminal():  # the launcher keeps a stop signal its caller ignores (nohup: SIGHUP), by design
        for s in (signal.SIGHUP, signal.SIGINT):
            signal.signal(s, signal.SIG_DFL)

    launcher = subprocess.Popen([sys.executable, "launch.py", str(commands), "--per-gpu", "2"], cwd=REPO,
                                env=dict(os.environ, CUDA_VISIBLE_DEVICES="", WAVES_RUNS_ROOT=str(tmp_path / "r")),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=as_from_a_terminal)
    ready = tmp_path / "ready"  # the third run waits for a free slot
    wait_for(lambda: ready.exists() and len(ready.read_text().split()) == 2, 60, "two runs with their traps set")
    runs = [int(pid) for pid in ready.read_text().split()]
    assert sorted(runs) == sorted(children(launcher.pid))
    launcher.send_signal(signum)
    out, err = launcher.communicate(timeout=60)
    wait_for(lambda: not any(alive(pid) for pid in runs), 10, "no run left")
    forwarded = "INT" if signum == signal.SIGINT else "TERM"  # train.py pauses on both
    assert sorted((tmp_path / "signals").read_text().split()) == sorted([str(pid) for pid in runs] + [forwarded] * 2)
    if signum != signal.SIGKILL:
        assert launcher.returncode == 128 + signum and "stopped by" in err and "[3/3]" not in out, err  # no more
        assert "failed" not in err and out.count("stopped: ") == 2, out  # a run paused by the stop did not fail


def advance_runs(tmp_path, data, *args, start=False):
    """scripts/advance_runs.sh on tmp_path/commands.txt with runs in tmp_path/r, on the CPU: run to its end, or
    started (its output on stdout)."""
    argv = ["bash", SCRIPTS / "advance_runs.sh", tmp_path / "commands.txt", "--runs-root", tmp_path / "r",
            "--data-root", data, "--python", sys.executable, *args]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    if start:
        return subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
    return subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)


def tiny_runs(tmp_path, *lines):
    """tmp_path/commands.txt of Tetrominoes NWM runs with FAST's flags, then each of `lines`."""
    return commands_file(tmp_path, *(f"{sys.executable} train.py --dataset tetrominoes {shlex.join(FAST)} {line}"
                                     for line in lines))


@pytest.mark.slow
def test_a_slice_stopped_by_sigterm_leaves_no_process_and_its_runs_resume(tmp_path, small_tetrominoes):
    # epochs enough that the run is still training when SIGTERM comes: an idle machine runs a few of these tiny
    # epochs within one 0.2 s poll
    tiny_runs(tmp_path, "--seed 0 --epochs 40  # a note")
    slice_ = advance_runs(tmp_path, small_tetrominoes, "--minutes", "30", start=True)
    metrics = tmp_path / "r" / "tetrominoes" / "nwm-linear-T8-h2-seed0" / "metrics.csv"
    wait_for(lambda: metrics.is_file(), 240, "the first epoch")  # the note did not swallow --runs-root
    run, = children(slice_.pid)
    slice_.send_signal(signal.SIGTERM)
    out, _ = slice_.communicate(timeout=120)
    assert slice_.returncode == 143 and not alive(run) and "finished after" not in out, out
    again = advance_runs(tmp_path, small_tetrominoes, "--minutes", "30")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "[1/1] finished after epoch 40 of 40" in again.stdout and "all 1 runs finished" in again.stdout


@pytest.mark.slow
def test_advance_runs_moves_every_run_one_slice_forward_and_packs_them(tmp_path, small_tetrominoes):
    tiny_runs(tmp_path, "--seed 0 --epochs 2", "--seed 1 --epochs 2")
    for state, epoch, end in (("paused", 1, "all runs paused or finished"), ("finished", 2, "all 2 runs finished")):
        result = advance_runs(tmp_path, small_tetrominoes, "--minutes", "1e-9", "--per-gpu", "2", "--archive",
                              tmp_path / "out" / "runs")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "tetrominoes  9/9 arrays intact" in result.stdout  # checked before training
        assert result.stdout.count(f"] {state} after epoch {epoch} of 2") == 2 and end in result.stdout
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    subprocess.run(f"cat {tmp_path}/out/runs.tar.gz.part-* | tar xzf - -C {unpacked}", shell=True, check=True)
    for seed in (0, 1):
        run = f"tetrominoes/nwm-linear-T8-h2-seed{seed}/test_metrics.json"
        assert (unpacked / run).read_bytes() == (tmp_path / "r" / run).read_bytes()
    assert sorted(p.name for p in (unpacked / "logs").glob("*.log")) == [  # named after their runs, as before
        f"tetrominoes_nwm-linear-T8-h2-seed{seed}.log" for seed in (0, 1)]


def test_a_slice_whose_archive_cannot_be_written_fails_and_says_where_the_runs_are(launched, tmp_path):
    runs_root, archive = tmp_path / "r", tmp_path / "out" / "runs"
    python = executable(tmp_path / "python", (  # a run that trains, and a file where the archive's folder would go
        f'#!/bin/sh\n[ "$1" = train.py ] || exit 0\nmkdir -p "{runs_root}/tetrominoes/x"\n'
        f'echo {{}} > "{runs_root}/tetrominoes/x/config.json"\ntouch "{tmp_path}/out"\n'))
    commands = commands_file(tmp_path, "py train.py --dataset tetrominoes --seed 0")
    status, _, err = launched(str(commands), "--slice", "--minutes", "1", "--python", str(python), "--runs-root",
                              str(runs_root), "--data-root", str(tmp_path / "data"), "--archive", str(archive))
    assert status == 1 and f"packing the runs as {archive}.tar.gz.part-* failed" in err
    assert f"nothing is lost: the 1 runs this slice touched are still in {runs_root}" in err
    assert (runs_root / "tetrominoes" / "x" / "config.json").is_file()


def test_the_unpack_command_works_on_paths_with_spaces(tmp_path, capsys):
    runs_root, archive = tmp_path / "my runs", tmp_path / "out dir" / "the runs"
    (runs_root / "tetrominoes" / "nwm-seed0").mkdir(parents=True)
    (runs_root / "tetrominoes" / "nwm-seed0" / "last.pt").write_bytes(b"weights")
    launch.pack(archive, runs_root, [runs_root / "tetrominoes" / "nwm-seed0"], part_mb=1)
    unpack = capsys.readouterr().out.split("unpack with: ")[1].strip()
    shutil.rmtree(runs_root)
    runs_root.mkdir()
    subprocess.run(unpack, shell=True, check=True, cwd=tmp_path / "out dir")
    assert (runs_root / "tetrominoes" / "nwm-seed0" / "last.pt").read_bytes() == b"weights"


def test_the_archive_is_split_into_parts_that_unpack_to_the_runs(tmp_path):
    runs_root, archive, unpacked = tmp_path / "r", tmp_path / "out" / "runs", tmp_path / "unpacked"
    for path, content in ((runs_root / "tetrominoes" / "nwm-seed0" / "last.pt", os.urandom(int(2.5 * 2**20))),
                          (runs_root / "logs" / "a.log", b"epoch 1\n"),  # random bytes do not compress: 3 parts
                          (tmp_path / "out" / "runs.tar.gz.part-ad", b"a part of an older archive")):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    launch.pack(archive, runs_root, [runs_root / "tetrominoes" / "nwm-seed0"], part_mb=1)
    assert [p.name for p in sorted((tmp_path / "out").iterdir())] == [
        "runs.tar.gz.part-aa", "runs.tar.gz.part-ab", "runs.tar.gz.part-ac"]
    unpacked.mkdir()
    subprocess.run(f"cat {archive}.tar.gz.part-* | tar xzf - -C {unpacked}", shell=True, check=True)
    for path in ("tetrominoes/nwm-seed0/last.pt", "logs/a.log"):
        assert (unpacked / path).read_bytes() == (runs_root / path).read_bytes()
