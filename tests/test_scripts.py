"""scripts/: the experiment grid as shell scripts. Every test runs bash on the real scripts;
nothing is trained (a fake interpreter and a fake sbatch record what they are called with)."""
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import train

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
READOUTS = ["linear", "fft", "last", "mean_time", "max_time"]
# script: dataset, model, the flag the configurations vary, its values, the paper's seed count
FAMILIES = {
    "tetrominoes/nwm.sh": ("tetrominoes", "nwm", "readout", READOUTS, 10),
    "tetrominoes/lstm.sh": ("tetrominoes", "lstm", "readout", ["linear", "fft"], 10),
    "tetrominoes/cnn.sh": ("tetrominoes", "cnn", "depth", [2, 4, 8, 16, 32], 10),
    "mnist/nwm.sh": ("mnist", "nwm", "readout", READOUTS, 10),
    "mnist/lstm.sh": ("mnist", "lstm", "readout", ["linear", "fft"], 10),
    "mnist/cnn.sh": ("mnist", "cnn", "depth", [2, 4, 8, 16, 32], 10),
    "multi_mnist/nwm.sh": ("multi_mnist", "nwm", "readout", ["linear"], 12),
    "multi_mnist/unet.sh": ("multi_mnist", "unet", "width", [2, 3, 4, 5], 12),
    "polygons/nwm.sh": ("polygons", "nwm", "readout", ["linear"], 10),
}


@pytest.fixture
def env(tmp_path):
    """The environment of a script run: runs root in tmp_path, no data root override."""
    env = dict(os.environ, WAVES_RUNS_ROOT=str(tmp_path / "runs"))
    env.pop("WAVES_DATA_ROOT", None)
    return env


def bash(script, *args, env, cwd, timeout=60):
    return subprocess.run(["bash", str(SCRIPTS / script), *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def parse(line):
    """A printed command -> (interpreter, train.py's parsed arguments); fails unless argparse accepts it."""
    argv = shlex.split(line)
    assert argv[1] == "train.py", line
    return argv[0], train.build_parser().parse_args(argv[2:])


def write_executable(path, text):
    path.write_text(text)
    path.chmod(0o755)
    return path


def fake_python(tmp_path, fail_on=None):
    """An interpreter that logs its working directory and arguments, failing (status 3)
    when its arguments contain `fail_on`."""
    fail = f'case "$*" in *"{fail_on}"*) exit 3 ;; esac\n' if fail_on else ""
    return write_executable(tmp_path / "python", f'#!/bin/sh\necho "$(pwd) $*" >> "{tmp_path}/calls.log"\n{fail}')


def calls(tmp_path):
    return (tmp_path / "calls.log").read_text().splitlines()


def test_every_script_is_covered_and_executable():
    scripts = {str(p.relative_to(SCRIPTS)) for p in SCRIPTS.rglob("*.sh")}
    assert scripts == set(FAMILIES) | {"lib.sh", "create_data.sh", "run_all.sh", "advance_runs.sh", "gpu_check.sh"}
    for script in scripts - {"lib.sh"}:  # lib.sh is sourced, not run
        assert os.access(SCRIPTS / script, os.X_OK), script
        assert "set -euo pipefail" in (SCRIPTS / script).read_text(), script


@pytest.mark.parametrize("script", FAMILIES)
def test_dry_run_prints_every_configuration_times_seeds(script, env, tmp_path):
    dataset, model, flag, values, _ = FAMILIES[script]
    result = bash(script, "--dry-run", "--seeds", "2", env=env, cwd=tmp_path)  # any cwd works
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(values) * 2
    parsed = [parse(line)[1] for line in lines]
    assert {(getattr(a, flag), a.seed) for a in parsed} == {(v, s) for v in values for s in (0, 1)}
    assert all(a.dataset == dataset and a.model == model for a in parsed)
    assert [a.seed for a in parsed] == sorted(a.seed for a in parsed)  # seeds outermost
    if model == "lstm":
        assert all(a.T == 20 for a in parsed)
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing


@pytest.mark.parametrize("script", ["multi_mnist/nwm.sh", "polygons/nwm.sh"])
def test_paper_seed_count_and_override(script, env, tmp_path):
    paper_seeds = FAMILIES[script][4]
    lines = bash(script, "--dry-run", env=env, cwd=tmp_path).stdout.splitlines()
    assert [parse(line)[1].seed for line in lines] == list(range(paper_seeds))
    lines = bash(script, "--dry-run", "--seeds=3", env=env, cwd=tmp_path).stdout.splitlines()
    assert [parse(line)[1].seed for line in lines] == [0, 1, 2]


def test_extra_args_and_python_reach_every_command(env, tmp_path):
    result = bash("mnist/cnn.sh", "--dry-run", "--seeds", "1", "--python", "/opt/py/bin/python",
                  "--", "--epochs", "50", "--train-size", "2000", env=env, cwd=tmp_path)
    lines = result.stdout.splitlines()
    assert len(lines) == 5
    for line in lines:
        assert line.endswith("--seed 0 --epochs 50 --train-size 2000")
        python, args = parse(line)
        assert python == "/opt/py/bin/python"
        assert (args.epochs, args.train_size) == (50, 2000)


@pytest.mark.parametrize("args, message", [
    (["--bogus"], "unknown option '--bogus'"),
    (["--seeds"], "--seeds needs a value"),
    (["--seeds", "two"], "--seeds needs a whole number"),
    (["--partition", "gpu"], "--partition needs --slurm"),
])
def test_bad_options_are_usage_errors(args, message, env, tmp_path):
    result = bash("tetrominoes/nwm.sh", *args, env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and "usage:" in result.stderr
    assert result.stdout == ""


def test_help_shows_the_script_and_the_shared_options(env, tmp_path):
    result = bash("multi_mnist/unet.sh", "--help", env=env, cwd=tmp_path)
    assert result.returncode == 0
    assert "U-Net baseline" in result.stdout
    for option in ["--dry-run", "--seeds N", "--keep-going", "--slurm", "--max-parallel N", "-- ARGS"]:
        assert option in result.stdout


def test_local_mode_runs_in_order_from_the_repo_root(env, tmp_path):
    python = fake_python(tmp_path)
    dry = bash("tetrominoes/cnn.sh", "--dry-run", "--seeds", "2", "--python", str(python), env=env, cwd=tmp_path)
    result = bash("tetrominoes/cnn.sh", "--seeds", "2", "--python", str(python), env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert calls(tmp_path) == [f"{REPO} {line.split(' ', 1)[1]}" for line in dry.stdout.splitlines()]
    assert "all 10 runs done" in result.stdout


def test_local_mode_stops_at_the_first_failure(env, tmp_path):
    python = fake_python(tmp_path, fail_on="--seed 1")
    result = bash("mnist/lstm.sh", "--seeds", "3", "--python", str(python), env=env, cwd=tmp_path)
    assert result.returncode == 3
    assert len(calls(tmp_path)) == 3  # seed 0 linear, seed 0 fft, seed 1 linear
    assert "run 3/6 failed (exit status 3)" in result.stderr


def test_keep_going_runs_everything_and_lists_the_failures(env, tmp_path):
    python = fake_python(tmp_path, fail_on="--seed 1")
    result = bash("mnist/lstm.sh", "--seeds", "3", "--python", str(python), "--keep-going", env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert len(calls(tmp_path)) == 6
    assert "2 of 6 runs failed" in result.stderr
    failed = [line.strip() for line in result.stderr.splitlines() if "train.py" in line]
    assert [parse(line)[1].readout for line in failed] == ["linear", "fft"]


def slurm_files(runs_root):
    commands, = (runs_root / "slurm").glob("tetrominoes_cnn_*.commands")
    return commands, commands.with_suffix(".sbatch")


def test_slurm_writes_a_job_array_and_submits_it(env, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    write_executable(bin_dir / "sbatch", f'#!/bin/sh\necho "$@" > "{tmp_path}/sbatch_args"\necho "Submitted batch job 7"\n')
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    python = fake_python(tmp_path)
    result = bash("tetrominoes/cnn.sh", "--slurm", "--seeds", "2", "--python", str(python), "--partition", "gpu",
                  "--time", "02:00:00", "--gpus", "2", "--cpus", "8", "--mem", "32G", "--account", "lab",
                  "--max-parallel", "3", "--", "--epochs", "5", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Submitted batch job 7" in result.stdout

    commands, sbatch = slurm_files(tmp_path / "runs")
    assert (tmp_path / "sbatch_args").read_text().strip() == str(sbatch)
    lines = commands.read_text().splitlines()
    assert len(lines) == 10 and all(parse(line)[1].epochs == 5 for line in lines)
    text = sbatch.read_text()
    for directive in ["--job-name=tetrominoes_cnn", "--array=0-9%3", f"--output={tmp_path}/runs/slurm/logs/%A_%a.out",
                      "--partition=gpu", "--time=02:00:00", "--gres=gpu:2", "--cpus-per-task=8", "--mem=32G",
                      "--account=lab"]:
        assert f"#SBATCH {directive}\n" in text
    assert "first=$((SLURM_ARRAY_TASK_ID * 1 + 1))" in text
    assert (tmp_path / "runs" / "slurm" / "logs").is_dir()

    # Array task 4 runs line 5 of the commands file, from the repository root.
    task = subprocess.run(["bash", str(sbatch)], env=dict(env, SLURM_ARRAY_TASK_ID="4"), cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert task.returncode == 0, task.stderr
    assert calls(tmp_path) == [f"{REPO} {lines[4].split(' ', 1)[1]}"]


def test_slurm_defaults_and_runs_root_from_extra_args(env, tmp_path):
    runs_root = tmp_path / "elsewhere"
    result = bash("tetrominoes/cnn.sh", "--slurm", "--dry-run", "--seeds", "1",
                  "--", f"--runs-root={runs_root}", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    commands, sbatch = slurm_files(runs_root)
    assert "not submitted (--dry-run)" in result.stdout and str(sbatch) in result.stdout
    text = sbatch.read_text()
    assert text in result.stdout
    directives = re.findall(r"^#SBATCH (\S+)$", text, re.M)
    assert directives == ["--job-name=tetrominoes_cnn", "--array=0-4", f"--output={runs_root}/slurm/logs/%A_%a.out",
                          "--gres=gpu:1"]


def test_slurm_without_sbatch_says_how_to_submit(env, tmp_path):
    env["PATH"] = os.defpath
    if shutil.which("sbatch", path=env["PATH"]):
        pytest.skip("sbatch is installed here")
    result = bash("tetrominoes/cnn.sh", "--slurm", "--seeds", "1", env=env, cwd=tmp_path)
    assert result.returncode == 1
    _, sbatch = slurm_files(tmp_path / "runs")
    assert "sbatch not found" in result.stderr and f"sbatch {sbatch}" in result.stderr


def test_create_data_commands(env, tmp_path):
    result = bash("create_data.sh", "--dry-run", "--data-root", "/data/waves", "--mnist-from-dir", "/dl/mnist",
                  "--python", "py", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "py data_scripts/create_tetrominoes.py --data-root /data/waves",
        "py data_scripts/create_polygons.py --data-root /data/waves",
        "py data_scripts/download_mnist.py --data-root /data/waves --from-dir /dl/mnist",
        "py data_scripts/create_multi_mnist.py --data-root /data/waves",
        "py data_scripts/verify_datasets.py --data-root /data/waves",
    ]
    assert bash("create_data.sh", "--seeds", "1", env=env, cwd=tmp_path).returncode == 2


def test_run_all_covers_the_whole_grid(env, tmp_path):
    result = bash("run_all.sh", "--dry-run", "--seeds", "1", "--python", "py",
                  "--", "--data-root", "/data/waves", "--runs-root", "/runs/waves", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[1] for line in lines[:5]] == [
        "data_scripts/create_tetrominoes.py", "data_scripts/create_polygons.py",
        "data_scripts/download_mnist.py", "data_scripts/create_multi_mnist.py", "data_scripts/verify_datasets.py"]
    assert all(line.endswith("--data-root /data/waves") for line in lines[:5])
    assert lines[-1] == "py produce_scores.py --runs-root /runs/waves --data-root /data/waves"
    trained = [parse(line)[1] for line in lines[5:-1]]
    assert len(trained) == sum(len(values) for _, _, _, values, _ in FAMILIES.values())
    assert [a.dataset for a in trained] == sorted([a.dataset for a in trained], key=["tetrominoes", "mnist",
                                                  "multi_mnist", "polygons"].index)


def test_environment_yml_matches_requirements():
    yaml = pytest.importorskip("yaml")
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    assert env["name"] == "waves"
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip, = [d["pip"] for d in env["dependencies"] if isinstance(d, dict)]
    names = {re.split(r"[=<>]", d)[0] for d in conda + pip}
    assert "python=3.11" in conda
    requirements = (REPO / "requirements.txt").read_text().splitlines()
    required = {re.split(r"[=<>]", line)[0] for line in requirements if line and not line.startswith("#")}
    assert required <= names


def fake_python_recording_overlap(tmp_path, seconds=0.6):
    """An interpreter that logs "<start> <end> <CUDA_VISIBLE_DEVICES> <args>" after sleeping a while."""
    return write_executable(tmp_path / "python", f"""#!/bin/sh
start=$(date +%s.%N)
sleep {seconds}
echo "$start $(date +%s.%N) ${{CUDA_VISIBLE_DEVICES:-none}} $*" >> "{tmp_path}/calls.log"
""")


def most_at_once(lines, gpu=None):
    spans = [(float(a), float(b)) for a, b, g, *_ in (line.split() for line in lines) if gpu in (None, g)]
    return max(sum(a <= t < b for a, b in spans) for t, _ in spans)


@pytest.mark.slow
def test_per_gpu_runs_n_at_a_time_on_every_visible_gpu(env, tmp_path):
    python = fake_python_recording_overlap(tmp_path)
    env["CUDA_VISIBLE_DEVICES"] = "3,5"
    result = bash("tetrominoes/cnn.sh", "--seeds", "2", "--per-gpu", "2", "--python", str(python), env=env,
                  cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "all 10 runs done" in result.stdout and "2 at a time on each of: 3 5" in result.stdout
    lines = calls(tmp_path)
    assert len(lines) == 10 and {line.split()[2] for line in lines} == {"3", "5"}
    assert most_at_once(lines, "3") == 2 and most_at_once(lines, "5") == 2 and most_at_once(lines) == 4
    logs = sorted((tmp_path / "runs" / "logs").glob("tetrominoes_cnn_*.log"))
    assert len(logs) == 10  # each run's output in its own log


def test_per_gpu_without_a_gpu_shares_the_cpu_and_stops_after_a_failure(env, tmp_path):
    python = fake_python(tmp_path, fail_on="--seed 0")
    env["PATH"] = os.defpath  # no nvidia-smi
    env.pop("CUDA_VISIBLE_DEVICES", None)
    result = bash("mnist/lstm.sh", "--seeds", "3", "--per-gpu", "2", "--python", str(python), env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert "at a time on each of: the CPU" in result.stdout
    assert len(calls(tmp_path)) == 2  # the first two (both seed 0) ran at once and failed: nothing more started
    assert "2 of 6 runs failed" in result.stderr


def fake_nvidia_smi(tmp_path, free_mib):
    """An nvidia-smi that lists GPUs 0 and 1, each with `free_mib` MiB free."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    write_executable(bin_dir / "nvidia-smi", f"""#!/bin/sh
case "$*" in *memory.free*) echo {free_mib} ;; *) printf '0\\n1\\n' ;; esac
""")
    return f"{bin_dir}:{os.defpath}"


def test_an_empty_cuda_visible_devices_means_no_gpu(env, tmp_path):
    python = fake_python(tmp_path)
    env.update(PATH=fake_nvidia_smi(tmp_path, 80_000), CUDA_VISIBLE_DEVICES="")
    result = bash("mnist/lstm.sh", "--seeds", "1", "--per-gpu", "2", "--python", str(python), env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "at a time on each of: the CPU" in result.stdout


@pytest.mark.slow
def test_per_gpu_packs_no_more_runs_than_the_gpu_memory_holds(env, tmp_path):
    python = fake_python_recording_overlap(tmp_path)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env["PATH"] = fake_nvidia_smi(tmp_path, 60_000)  # 58 GB free: two Multi-MNIST NWM runs of 28 GB each
    result = bash("multi_mnist/nwm.sh", "--seeds", "6", "--per-gpu", "4", "--python", str(python), env=env,
                  cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "GPU 0: 58 GB free, about 28 GB a run (--gpu-gb): 2 at a time instead of 4" in result.stderr
    lines = calls(tmp_path)
    assert len(lines) == 6 and most_at_once(lines, "0") == 2 and most_at_once(lines, "1") == 2


def test_per_gpu_refuses_a_gpu_without_room_for_one_run(env, tmp_path):
    python = fake_python(tmp_path)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env["PATH"] = fake_nvidia_smi(tmp_path, 20_000)
    result = bash("multi_mnist/nwm.sh", "--seeds", "1", "--per-gpu", "2", "--python", str(python), env=env,
                  cwd=tmp_path)
    assert result.returncode == 1 and "GPU 0 has 19 GB free and a run takes about 28 GB" in result.stderr
    assert not (tmp_path / "calls.log").exists()  # nothing started
    result = bash("multi_mnist/nwm.sh", "--seeds", "1", "--per-gpu", "2", "--gpu-gb", "8", "--python", str(python),
                  env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("taskset") is None or len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores")
def test_per_gpu_runs_each_get_their_share_of_the_cores(env, tmp_path):
    python = write_executable(tmp_path / "python", f"""#!/bin/sh
echo "$(grep Cpus_allowed_list /proc/self/status | cut -f2) $*" >> "{tmp_path}/calls.log"
""")
    env["PATH"] = os.defpath  # no GPU: the runs share the CPU
    env.pop("CUDA_VISIBLE_DEVICES", None)
    result = bash("mnist/lstm.sh", "--seeds", "1", "--per-gpu", "2", "--python", str(python), env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    cores = sorted(os.sched_getaffinity(0))
    half = len(cores) // 2
    pinned = {line.split()[0] for line in calls(tmp_path)}
    assert len(calls(tmp_path)) == 2 and len(pinned) == 2  # two runs, on different cores
    for allowed in pinned:  # each on half of the cores
        assert len(set().union(*(range(int(a), int(b or a) + 1) for a, _, b in
                                 (part.partition("-") for part in allowed.split(","))))) == half


def test_per_gpu_lists_the_runs_whose_cuda_graph_failed(env, tmp_path):
    python = write_executable(tmp_path / "python", """#!/bin/sh
case "$*" in *"--seed 0"*) echo "warning: CUDA graph capture failed (boom); training with eager steps" >&2 ;; esac
""")
    env["CUDA_VISIBLE_DEVICES"] = "0"
    result = bash("mnist/lstm.sh", "--seeds", "2", "--per-gpu", "2", "--python", str(python), env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "2 of 4 runs trained with eager steps, their CUDA graph capture failed" in result.stdout


def test_slurm_packs_n_runs_into_each_array_task(env, tmp_path):
    python = fake_python(tmp_path)
    result = bash("tetrominoes/cnn.sh", "--slurm", "--dry-run", "--seeds", "1", "--per-gpu", "2",
                  "--python", str(python), env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    commands, sbatch = slurm_files(tmp_path / "runs")
    lines = commands.read_text().splitlines()
    assert len(lines) == 5 and "#SBATCH --array=0-2\n" in sbatch.read_text()  # 5 runs, 2 per task: 3 tasks
    for task, expected in ((1, lines[2:4]), (2, lines[4:])):
        (tmp_path / "calls.log").unlink(missing_ok=True)
        run = subprocess.run(["bash", str(sbatch)], env=dict(env, SLURM_ARRAY_TASK_ID=str(task)), cwd=tmp_path,
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        assert sorted(calls(tmp_path)) == sorted(f"{REPO} {line.split(' ', 1)[1]}" for line in expected)



@pytest.fixture
def small_tetrominoes(tmp_path):
    data = tmp_path / "data"
    subprocess.run([sys.executable, "data_scripts/create_tetrominoes.py", "--data-root", str(data), "--train", "32",
                    "--val", "8", "--test", "8"], cwd=REPO, check=True, capture_output=True)
    return data


@pytest.mark.slow
def test_advance_runs_moves_every_run_one_slice_forward_and_packs_them(env, tmp_path, small_tetrominoes):
    runs_root, archive = tmp_path / "slices", tmp_path / "out" / "runs"
    tiny = "--device cpu --batch-size 16 --T 6 --c-mid 4 --readout-width 8 --epochs 2 --amp off"
    commands = tmp_path / "commands.txt"
    commands.write_text(f"# two runs\n{sys.executable} train.py --dataset tetrominoes --seed 0 {tiny}\n"
                        f"{sys.executable} train.py --dataset tetrominoes --seed 1 {tiny}\n")
    args = [str(commands), "--minutes", "1e-9", "--per-gpu", "2", "--runs-root", str(runs_root), "--data-root",
            str(small_tetrominoes), "--archive", str(archive), "--python", sys.executable]
    env.pop("CUDA_VISIBLE_DEVICES", None)
    for slice_number in (1, 2):
        result = bash("advance_runs.sh", *args, env=env, cwd=tmp_path, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "tetrominoes  9/9 arrays intact" in result.stdout  # checked before training
        state = "in progress" if slice_number == 1 else "finished"
        assert result.stdout.count(f"{slice_number}/2 epochs, {state}") == 2
    # the archive holds both run directories, which unpack to what the runs root holds
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    parts = sorted((tmp_path / "out").glob("runs.tar.gz.part-*"))
    subprocess.run(f"cat {' '.join(map(str, parts))} | tar xzf - -C {unpacked}", shell=True, check=True)
    for seed in (0, 1):
        name = f"tetrominoes/nwm-linear-T6-h2-seed{seed}"
        assert (unpacked / name / "test_metrics.json").read_bytes() == (runs_root / name / "test_metrics.json").read_bytes()
    assert len(list((unpacked / "logs").glob("*.log"))) == 2  # and what the runs printed


@pytest.mark.slow
def test_advance_runs_trains_nothing_on_data_that_differs(env, tmp_path, small_tetrominoes):
    (small_tetrominoes / "tetrominoes" / "val_masks.npy").write_bytes(b"damaged")
    commands = tmp_path / "commands.txt"
    commands.write_text(f"{sys.executable} train.py --dataset tetrominoes --device cpu --epochs 1\n")
    result = bash("advance_runs.sh", str(commands), "--minutes", "1", "--runs-root", str(tmp_path / "r"),
                  "--data-root", str(small_tetrominoes), "--python", sys.executable, env=env, cwd=tmp_path)
    assert result.returncode == 1 and "nothing was trained" in result.stderr
    assert not (tmp_path / "r" / "tetrominoes").exists()


@pytest.mark.slow
def test_advance_runs_queue_shares_one_slice_among_the_runs(env, tmp_path, small_tetrominoes):
    tiny = "--batch-size 16 --T 6 --c-mid 4 --readout-width 8 --epochs 1 --amp off --device cpu"
    commands = tmp_path / "commands.txt"
    commands.write_text("".join(f"{sys.executable} train.py --dataset tetrominoes --seed {seed} {tiny}\n"
                                for seed in (0, 1, 2)))
    common = [str(commands), "--queue", "--runs-root", str(tmp_path / "r"), "--data-root", str(small_tetrominoes),
              "--python", sys.executable]
    env.pop("CUDA_VISIBLE_DEVICES", None)
    # a slice too short for any run: none starts
    spent = bash("advance_runs.sh", *common, "--minutes", "0.01", "--min-start", "1", env=env, cwd=tmp_path)
    assert spent.returncode == 0, spent.stdout + spent.stderr
    logs = "".join(p.read_text() for p in (tmp_path / "r" / "logs").glob("*.log"))
    assert logs.count("not started, under 1 minutes of the slice left") == 3
    assert not (tmp_path / "r" / "tetrominoes").exists()
    # a long one: the runs go one after another, each with what is left of it, until all are done
    result = bash("advance_runs.sh", *common, "--minutes", "30", env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("1/1 epochs, finished") == 3


def test_gpu_check_dry_run_lists_every_step_with_a_timeout_within_nine_minutes(env, tmp_path):
    result = bash("gpu_check.sh", "--dry-run", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    steps = re.findall(r"^  (\w+) +(\d+)s  ", result.stdout, re.MULTILINE)
    assert [name for name, _ in steps] == ["data", "cuda_tests", "resume", "graph_nwm", "graph_lstm", "graph_unet",
                                           "tf32", "bench", "per_gpu"]
    assert sum(int(seconds) for _, seconds in steps) < 9 * 60
    cpu = bash("gpu_check.sh", "--dry-run", "--device", "cpu", env=env, cwd=tmp_path)
    assert "cuda_tests" in cpu.stdout and "skipped on the CPU: needs CUDA" in cpu.stdout
