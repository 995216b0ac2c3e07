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
with one matrix product (one per image for a basis per channel). Memory grows with the
chunk, not with the batch: these paths need no segments for backpropagation through time
(the NWM's forward pass keeps ~sqrt(T) states per image for its backward pass,
nwm_cpu.checkpoint_buffer).
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
    """sum_t y_t (x) basis[t] over the T = len(basis) frames y_t (each like y0: B x C x H x W),
    where run(chunk, frames) writes the frames of the images of a slice of the batch into
    `frames` (a T x n x C x H x W view whose strides give the layout). basis: T x K', the same
    for every channel, gives (B*C*H*W) x K', one matrix product per chunk (time its inner
    dimension); or T x C x K', one per channel and summed over the channels, gives (B*H*W) x K'
    (a readout folded into its head, readouts.py), one product per image over its T*C frames.
    half: frames, basis and result in bfloat16 (the products on the CPU's bfloat16 units)."""
    T, (B, C, H, W), K = basis.shape[0], y0.shape, basis.shape[-1]
    dtype = torch.bfloat16 if half else y0.dtype
    basis = basis.to(dtype)
    per_channel = basis.dim() == 3
    projected = y0.new_empty(B, H * W if per_channel else C * H * W, K, dtype=dtype)
    for chunk in _chunks(y0, T):
        n = chunk.stop - chunk.start
        if per_channel:  # each image's frames in a row: its T*C frames are one operand
            frames = y0.new_empty(n, T, C, H, W, dtype=dtype)
            run(chunk, frames.transpose(0, 1))
            # one product per image: torch.matmul over the chunk would copy the transposed frames first
            for image, out in zip(frames.view(n, T * C, H * W), projected[chunk]):
                torch.mm(image.t(), basis.view(T * C, K), out=out)
        else:
            frames = y0.new_empty(T, n, C, H, W, dtype=dtype)
            run(chunk, frames)
            torch.mm(frames.view(T, -1).t(), basis, out=projected[chunk].view(-1, K))
    return projected.view(-1, K)


def projection_backward(run, y0, basis, grad_projected, need_basis, half):
    """The gradient of `projection`'s basis (None unless need_basis), while run(chunk, g_frames,
    frames) takes each chunk's frames' gradients (bfloat16 if half) back through its recurrence,
    writing the frames into `frames` (or not, if None); both T x n x C x H x W views laid out as
    `projection`'s frames. grad_projected: the gradient of the projection, B x C x H x W x K'
    (B x H x W x K' for a per-channel basis), any strides."""
    T, (_, C, H, W), K = basis.shape[0], y0.shape, basis.shape[-1]
    dtype = torch.bfloat16 if half else y0.dtype
    g_basis = torch.zeros_like(basis) if need_basis else None
    basis_in = basis.to(dtype)
    per_channel = basis.dim() == 3
    for chunk in _chunks(y0, T):
        n = chunk.stop - chunk.start
        if per_channel:
            g_chunk = grad_projected[chunk].reshape(n, H * W, K).to(dtype)  # a copy of the chunk's rows at most
            g_frames = y0.new_empty(n, T * C, H * W, dtype=dtype)
            for image, g in zip(g_frames, g_chunk):
                torch.mm(basis_in.view(T * C, K), g.t(), out=image)
            frames = y0.new_empty(n, T, C, H, W, dtype=dtype) if need_basis else None
            run(chunk, g_frames.view(n, T, C, H, W).transpose(0, 1), None if frames is None else frames.transpose(0, 1))
            if need_basis:
                for image, g in zip(frames.view(n, T * C, H * W), g_chunk):
                    g_basis += (image @ g).view_as(basis).to(g_basis.dtype)
        else:
            g_chunk = grad_projected[chunk].reshape(-1, K).to(dtype)
            frames = y0.new_empty(T, n, C, H, W, dtype=dtype) if need_basis else None
            run(chunk, (basis_in @ g_chunk.t()).view(T, n, C, H, W), frames)
            if need_basis:
                g_basis += (frames.view(T, -1) @ g_chunk).to(g_basis.dtype)
    return g_basis
