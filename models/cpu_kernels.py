"""Small compiled CPU kernels for the recurrences (models/*_kernel.c): building, loading, threads, projection.

Eager recurrences launch a convolution, a circular pad and several elementwise passes
over the whole batch at every step, each a trip through memory. A kernel runs one image
through all T steps while its state stays in cache. Each is compiled with the system's
C compiler (`cc`, or $CC) on first use, once per dtype and channel count, and cached in
WAVES_KERNEL_CACHE (default ~/.cache/waves-kernels); the compile time is printed and kept
in `compile_seconds`. Without a working compiler, or with WAVES_CPU_KERNEL=0, `load`
returns None and the model's eager path runs (one line on stderr says why).

The batch is processed in chunks of images, each running all T steps; the images of a
chunk are split among torch's CPU threads (ctypes releases the GIL during each call, so
they run in parallel), and the chunk's frames are projected on the readout's time basis
with one matrix product. Memory grows with the chunk, not with the batch: these paths
need no segments for backpropagation through time (the NWM's forward pass keeps ~sqrt(T)
states per image for its backward pass, nwm_cpu.checkpoint_buffer).
"""
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import torch

HERE = Path(__file__).parent
HEADER = HERE / "cpu_kernels.h"
FLAGS = ["-O3", "-march=native", "-fopenmp-simd", "-fPIC", "-shared", "-std=gnu11"]
# gcc tunes some AVX-512 CPUs to split 512-bit vectors in two: the kernels' vectors are the CPU's full width
X86_FLAGS = ["-mprefer-vector-width=512"]
DTYPES = {torch.float32: "float", torch.float64: "double"}
CHUNK_BYTES = 2**26  # frames of the images processed together (_chunks)
compile_seconds = {}  # (kernel, dtype, channels) -> seconds this process spent compiling (absent: cached)


def cache_dir():
    return Path(os.environ.get("WAVES_KERNEL_CACHE") or Path.home() / ".cache" / "waves-kernels")


def _host_cpu():
    """What -march=native compiles for: the CPU's model and instruction-set flags, so that a
    cache in a home folder shared by different machines (a cluster's nodes) keeps one
    library per kind of CPU instead of loading one built for another."""
    try:
        info = Path("/proc/cpuinfo").read_text()
        return sorted({line for line in info.splitlines() if line.startswith(("model name", "flags"))})
    except OSError:
        return platform.machine() + platform.processor()


def compile_flags():
    """The compiler flags of the kernels on this machine (-march=native: whatever the CPU has)."""
    return FLAGS + (X86_FLAGS if platform.machine().lower() in ("x86_64", "amd64") else [])


def cpu_features():
    """The instruction-set extensions that matter here that this CPU has (Linux; [] elsewhere)."""
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")
    lines = _host_cpu()
    have = set() if isinstance(lines, str) else set(" ".join(l for l in lines if l.startswith("flags")).split())
    return [f for f in wanted if f in have]


def _compile(name, real, channels):
    """(path of the compiled library models/<name>_kernel.c, whether it was compiled now rather
    than found in the cache); raises RuntimeError or OSError if it cannot be built."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler found (cc, gcc or $CC)")
    source = (HERE / f"{name}_kernel.c").read_bytes()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    cmd = [compiler, *compile_flags(), f"-I{HERE}", f"-DREAL={real}", f"-DREAL_{real.upper()}", f"-DNC={channels}",
           "-x", "c", "-", "-o"]
    # with vector tanh and exp from glibc's libmvec where it links, else scalar ones
    candidates, host = [], _host_cpu()
    for extra in (["-DMVEC", "-lmvec"], []):
        key = hashlib.sha256(repr((cmd, extra, version, host)).encode() + source + HEADER.read_bytes()).hexdigest()
        candidates.append((extra, cache_dir() / f"{name}_{real}_{channels}_{key[:16]}.so"))
    for _, path in candidates:
        if path.exists():
            return path, False
    cache_dir().mkdir(parents=True, exist_ok=True)
    errors = []
    for extra, path in candidates:
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".so", delete=False) as tmp:
            pass
        result = subprocess.run(cmd + [tmp.name, *extra, "-lm"], input=source, capture_output=True)
        if result.returncode == 0:
            os.replace(tmp.name, path)  # atomic: concurrent processes may compile the same kernel
            return path, True
        os.unlink(tmp.name)
        errors += result.stderr.decode(errors="replace").strip().splitlines()[-1:]
    raise RuntimeError(f"{compiler} failed: {' | '.join(errors)}")


@lru_cache(maxsize=None)
def load(name, dtype, channels, **argtypes):
    """The kernel models/<name>_kernel.c for `channels` channels of `dtype` (float32 or float64),
    with its functions' ctypes argument types set (argtypes: function name -> tuple), or None."""
    if os.environ.get("WAVES_CPU_KERNEL", "1") == "0":
        print(f"{name} CPU kernel off (WAVES_CPU_KERNEL=0): using the eager recurrence", file=sys.stderr)
        return None
    start = time.perf_counter()
    try:
        path, compiled = _compile(name, DTYPES[dtype], channels)
        lib = ctypes.CDLL(str(path))
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        print(f"{name} CPU kernel unavailable ({e}): using the eager recurrence", file=sys.stderr)
        return None
    if compiled:
        compile_seconds[name, dtype, channels] = seconds = time.perf_counter() - start
        print(f"compiled the {name} CPU kernel ({DTYPES[dtype]}, {channels} channels) in {seconds:.1f} s: {path}",
              file=sys.stderr)
    for function, types in argtypes.items():
        getattr(lib, function).argtypes = list(types)
    return lib


_pool = None  # (threads, ThreadPoolExecutor)


def _forget_pool():
    global _pool
    _pool = None


if hasattr(os, "register_at_fork"):  # (not on Windows)
    os.register_at_fork(after_in_child=_forget_pool)  # a forked child has none of the pool's threads


def parallel(fn, batch, *args):
    """fn(b0, b1, batch, *args) over slices of the batch, one per CPU thread."""
    global _pool
    threads = min(torch.get_num_threads(), batch)
    if _pool is None or _pool[0] < threads:
        _pool = (threads, ThreadPoolExecutor(max_workers=threads))
    bounds = [batch * i // threads for i in range(threads + 1)]
    calls = [_pool[1].submit(fn, bounds[i], bounds[i + 1], batch, *args) for i in range(threads)]
    if any(c.result() != 0 for c in calls):
        raise MemoryError("CPU kernel: out of memory for its workspace")


def pointers(*tensors):
    """Data pointers of contiguous tensors of one dtype (what the kernels index)."""
    assert all(t.is_contiguous() and t.dtype == tensors[0].dtype for t in tensors)
    return [t.data_ptr() for t in tensors]


def _chunks(y, T):
    """Slices of the batch processed together: whole multiples of the threads, at most
    CHUNK_BYTES of frames (T of them per image), at least one image per thread."""
    per_image = T * y[0].numel() * y.element_size()
    threads = torch.get_num_threads()
    size = max(threads, CHUNK_BYTES // per_image // threads * threads)
    return [slice(b, min(b + size, len(y))) for b in range(0, len(y), size)]


def projection(run, y0, basis, half):
    """sum_t y_t (x) basis[t] over the T = len(basis) frames y_t (each like y0: B x C x H x W)
    as (B*C*H*W) x K', where run(chunk, frames) writes the frames of the images of a slice of
    the batch into `frames` (T x n x C x H x W). One matrix product per chunk projects them
    (time is its inner dimension). half: frames, basis and result in bfloat16 (the product
    on the CPU's bfloat16 units)."""
    T, (B, C, H, W) = basis.shape[0], y0.shape
    dtype = torch.bfloat16 if half else y0.dtype
    basis = basis.to(dtype)
    projected = y0.new_empty(B, C * H * W, basis.shape[1], dtype=dtype)
    for chunk in _chunks(y0, T):
        frames = y0.new_empty(T, chunk.stop - chunk.start, C, H, W, dtype=dtype)
        run(chunk, frames)
        torch.mm(frames.view(T, -1).t(), basis, out=projected[chunk].view(-1, basis.shape[1]))
    return projected.view(-1, basis.shape[1])


def projection_backward(run, y0, basis, grad_projected, need_basis, half):
    """The gradient of `projection`'s basis (None unless need_basis), while run(chunk, g_frames,
    frames) takes each chunk's frames' gradients (T x n*C*H*W, bfloat16 if half) back through its
    recurrence, writing the frames into `frames` (or not, if None). grad_projected: the gradient
    of the projection, B x C x H x W x K', any strides."""
    T = basis.shape[0]
    dtype = torch.bfloat16 if half else y0.dtype
    g_basis = torch.zeros_like(basis) if need_basis else None
    basis_in = basis.to(dtype)
    for chunk in _chunks(y0, T):
        g_chunk = grad_projected[chunk].reshape(-1, basis.shape[1]).to(dtype)  # a copy of the chunk's rows at most
        frames = y0.new_empty(T, chunk.stop - chunk.start, *y0.shape[1:], dtype=dtype) if need_basis else None
        run(chunk, basis_in @ g_chunk.t(), frames)
        if need_basis:
            g_basis += (frames.view(T, -1) @ g_chunk).to(g_basis.dtype)
    return g_basis
