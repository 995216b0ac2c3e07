"""Where things live and what runs them, resolved in one place for every tool.

A command-line flag wins, else the environment variable, else the default; relative
paths are taken from the current directory (the README's commands run from the
repository root, where git ignores ./data and ./runs):

    WAVES_DATA_ROOT    the datasets                                   ./data
    WAVES_RUNS_ROOT    training runs                                  ./runs
    WAVES_SCORES       the score table produce_scores.py writes       <runs root>/scores.csv
    WAVES_FIGURES      figures and animations the tools write         <runs root>/figures
    WAVES_TABLES       formatted score tables                         <runs root>/tables

So nothing a tool writes lands in the committed results/ folder unless it is named
explicitly (the command in docs/results.md that regenerates the shipped evidence does that).
The device is `auto` (CUDA when available) unless named; CPU threads default to the
cores this process may use. Also here: what the device computes fast (bfloat16) and the
process-wide CPU memory allocator setting.
"""
import ctypes
import os
import platform
import sys
from pathlib import Path

import torch

DATA_ROOT_ENV, RUNS_ROOT_ENV = "WAVES_DATA_ROOT", "WAVES_RUNS_ROOT"
SCORES_ENV, FIGURES_ENV, TABLES_ENV = "WAVES_SCORES", "WAVES_FIGURES", "WAVES_TABLES"


def _path(value, env, default):
    if value is not None:
        return Path(value)
    return Path(os.environ[env]) if os.environ.get(env) else Path(default)


def data_root(value=None) -> Path:
    return _path(value, DATA_ROOT_ENV, "data")


def runs_root(value=None) -> Path:
    return _path(value, RUNS_ROOT_ENV, "runs")


def scores_path(value=None, runs_root_value=None) -> Path:
    return _path(value, SCORES_ENV, runs_root(runs_root_value) / "scores.csv")


def figures_dir(value=None) -> Path:
    return _path(value, FIGURES_ENV, runs_root() / "figures")


def tables_dir(value=None) -> Path:
    return _path(value, TABLES_ENV, runs_root() / "tables")


def notebook_settings():
    """The notebooks' inputs and outputs. By default they read the shipped evidence in
    results/ (runs and score table) and write under the runs root; WAVES_SCORES,
    WAVES_FIGURE_RUNS and WAVES_DATA_ROOT point them at other inputs, WAVES_FIGURES and
    WAVES_TABLES at other outputs, and WAVES_QUICK=1 makes them small (for the tests)."""
    return dict(scores=_path(None, SCORES_ENV, "results/scores.csv"),
                runs=_path(None, "WAVES_FIGURE_RUNS", "results/runs"),
                data=data_root(), figures=figures_dir(), tables=tables_dir(),
                quick=os.environ.get("WAVES_QUICK", "0") not in ("", "0"))


def pick_device(name="auto"):
    """A torch.device from cpu, cuda, cuda:N or auto; ValueError with what to use instead.

    A GPU becomes the current CUDA device, so that streams and graphs, which are created on
    the current device, are made on the one named."""
    try:
        device = torch.device(name if name != "auto" else "cuda" if torch.cuda.is_available() else "cpu")
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto") from None
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise ValueError(f"device {name} asked for, but this PyTorch sees no CUDA device; use cpu")
    if device.index is None:  # the current device
        return device
    count = torch.cuda.device_count()
    if device.index >= count:
        raise ValueError(f"device {name} asked for, but this PyTorch sees {count} CUDA device(s): "
                         f"use cuda:0 .. cuda:{count - 1}")
    torch.cuda.set_device(device)
    return device


def device_name(device):
    """What a device is, for the records: the GPU's name, or the CPU's model name."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name, flags = platform.processor() or platform.machine() or "cpu", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    # virtual machines often hide the model ("Intel Xeon Processor"): the widest vector unit tells them apart
    widest = next((f for f in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if f in flags), None)
    return f"{name} ({widest})" if widest else name


def device_memory(device):
    """Bytes of memory on a device: the GPU's, or the machine's RAM for the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def available_cores():
    """The CPU cores this process may run on (its affinity mask, e.g. a SLURM allocation)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def set_threads(threads=None):
    """Use `threads` CPU threads for PyTorch's kernels (default: available_cores()), at most
    available_cores(), with a warning: more threads than cores only wait on each other."""
    cores = available_cores()
    if threads and threads > cores:
        print(f"warning: --threads {threads}: this process may use {cores} core(s), so it uses {cores} threads",
              file=sys.stderr)
    threads = min(threads or cores, cores)
    torch.set_num_threads(threads)
    return threads


def bf16_supported(device):
    """Whether bfloat16 matrix products are fast here: a GPU that computes them natively (Ampere
    and later), or a CPU with AVX512-BF16/AMX.

    Elsewhere (older GPUs, AVX2-only CPUs) PyTorch emulates them, many times slower than float32,
    so --amp auto trains in float32 there.
    """
    from models.common import bf16_native_cpu  # keeps `import settings` light

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return bf16_native_cpu()
    return False


def tune_cpu_allocator():
    """Let freed CPU memory be reused instead of handed back to the OS after every tensor, which
    costs a higher peak resident size. Why: glibc maps each large tensor afresh, and the kernel
    zeroes its pages again on first touch (docs/speed.md, "Notes moved from the code"). Returns
    whether it could be applied (glibc only)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    # -1: never trim (mallopt's largest threshold, 2 GiB, still trims after a step that frees more)
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, -1))
