"""The NWM recurrence on the CPU through a small compiled kernel (models/nwm_kernel.c).

The eager recurrence (models/nwm_fused.py) launches a convolution, a circular pad and
several elementwise passes over the whole batch at every step, each a trip through
memory. The kernel runs one image through all T steps while its state stays in cache,
one pass per step. It is compiled with the system's C compiler (`cc`, or $CC)
on first use, once per dtype and channel count, and cached in WAVES_KERNEL_CACHE
(default ~/.cache/waves-kernels); the compile time is printed and kept in
`compile_seconds`. Without a working compiler, or with WAVES_CPU_KERNEL=0, `kernel`
returns None and the eager recurrence runs (one line on stderr says why).

The batch is processed in chunks of images, each running all T steps; the images of a
chunk are split among torch's CPU threads (ctypes releases the GIL during each call, so
they run in parallel). Memory grows with the chunk, not with the batch: this path needs
no segments for backpropagation through time.
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

SOURCE = Path(__file__).with_name("nwm_kernel.c")
FLAGS = ["-O3", "-march=native", "-fopenmp-simd", "-fPIC", "-shared", "-std=gnu11"]
# gcc tunes some AVX-512 CPUs to split 512-bit vectors in two: the kernel's vectors are the CPU's full width
X86_FLAGS = ["-mprefer-vector-width=512"]
DTYPES = {torch.float32: "float", torch.float64: "double"}
CHUNK_BYTES = 2**26  # frames of the images processed together (_chunks)
compile_seconds = {}  # (dtype, channels) -> seconds this process spent compiling (absent: cached)


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
    """The compiler flags of the kernel on this machine (-march=native: whatever the CPU has)."""
    return FLAGS + (X86_FLAGS if platform.machine().lower() in ("x86_64", "amd64") else [])


def cpu_features():
    """The instruction-set extensions that matter here that this CPU has (Linux; [] elsewhere)."""
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")
    lines = _host_cpu()
    have = set() if isinstance(lines, str) else set(" ".join(l for l in lines if l.startswith("flags")).split())
    return [f for f in wanted if f in have]


def _compile(real, channels):
    """(path of the compiled library, whether it was compiled now rather than found in the
    cache); raises RuntimeError or OSError if it cannot be built."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler found (cc, gcc or $CC)")
    source = SOURCE.read_bytes()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    cmd = [compiler, *compile_flags(), f"-DREAL={real}", f"-DNC={channels}", "-x", "c", "-", "-o"]
    # with vector tanh from glibc's libmvec where it links, else scalar tanh
    candidates, host = [], _host_cpu()
    for extra in (["-DMVEC", "-lmvec"], []):
        key = hashlib.sha256(repr((cmd, extra, version, host)).encode() + source).hexdigest()[:16]
        candidates.append((extra, cache_dir() / f"nwm_{real}_{channels}_{key}.so"))
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
def _load(dtype, channels):
    if os.environ.get("WAVES_CPU_KERNEL", "1") == "0":
        print("NWM CPU kernel off (WAVES_CPU_KERNEL=0): using the eager recurrence", file=sys.stderr)
        return None
    start = time.perf_counter()
    try:
        path, compiled = _compile(DTYPES[dtype], channels)
        lib = ctypes.CDLL(str(path))
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        print(f"NWM CPU kernel unavailable ({e}): using the eager recurrence", file=sys.stderr)
        return None
    if compiled:
        compile_seconds[dtype, channels] = seconds = time.perf_counter() - start
        print(f"compiled the NWM CPU kernel ({DTYPES[dtype]}, {channels} channels) in {seconds:.1f} s: {path}",
              file=sys.stderr)
    L, P, D, I = ctypes.c_long, ctypes.c_void_p, ctypes.c_double, ctypes.c_int
    lib.nwm_forward.argtypes = [L] * 6 + [P] * 5 + [D, P, I]
    lib.nwm_backward.argtypes = [L] * 6 + [P] * 6 + [D] + [P] * 7 + [I]
    return lib


def kernel(y):
    """The compiled kernel for state tensors like y (B x C x H x W), or None where it does
    not apply (not a float32/float64 CPU tensor) or could not be built."""
    if y.device.type != "cpu" or y.dtype not in DTYPES or y.dim() != 4:
        return None
    return _load(y.dtype, y.shape[1])


_pool = None  # (threads, ThreadPoolExecutor)


def _forget_pool():
    global _pool
    _pool = None


if hasattr(os, "register_at_fork"):  # (not on Windows)
    os.register_at_fork(after_in_child=_forget_pool)  # a forked child has none of the pool's threads


def _parallel(fn, batch, *args):
    """fn(b0, b1, batch, *args) over slices of the batch, one per CPU thread."""
    global _pool
    threads = min(torch.get_num_threads(), batch)
    if _pool is None or _pool[0] < threads:
        _pool = (threads, ThreadPoolExecutor(max_workers=threads))
    bounds = [batch * i // threads for i in range(threads + 1)]
    calls = [_pool[1].submit(fn, bounds[i], bounds[i + 1], batch, *args) for i in range(threads)]
    if any(c.result() != 0 for c in calls):
        raise MemoryError("NWM CPU kernel: out of memory for its workspace")


def _pointers(*tensors):
    """Data pointers of contiguous tensors of one dtype (what the kernel indexes)."""
    assert all(t.is_contiguous() and t.dtype == tensors[0].dtype for t in tensors)
    return [t.data_ptr() for t in tensors]


def _chunks(y, T):
    """Slices of the batch processed together: whole multiples of the threads, at most
    CHUNK_BYTES of frames (T of them per image), at least one image per thread."""
    per_image = T * y[0].numel() * y.element_size()
    threads = torch.get_num_threads()
    size = max(threads, CHUNK_BYTES // per_image // threads * threads)
    return [slice(b, min(b + size, len(y))) for b in range(0, len(y), size)]


def projection(lib, y0, dt_omega, damping, weight, basis, dt, half=False):
    """sum_t y_t (x) basis[t] over the T = len(basis) steps from (y0, z0 = 0), as
    (B*C*H*W) x K'. Each chunk of images runs all T steps into a buffer of frames, which one
    matrix product projects on the basis (the time axis is the product's inner dimension).
    half: frames, basis and the result in bfloat16 (the product on the CPU's bfloat16 units)."""
    T, (B, C, H, W) = basis.shape[0], y0.shape
    dtype = torch.bfloat16 if half else y0.dtype
    basis = basis.to(dtype)
    projected = y0.new_empty(B, C * H * W, basis.shape[1], dtype=dtype)
    for chunk in _chunks(y0, T):
        y, z = y0[chunk], torch.zeros_like(y0[chunk])
        frames = y.new_empty(T, *y.shape, dtype=dtype)
        _parallel(lib.nwm_forward, len(y), H, W, T, *_pointers(y, z, dt_omega[chunk], damping[chunk], weight), dt,
                  frames.data_ptr(), half)
        torch.mm(frames.view(T, -1).t(), basis, out=projected[chunk].view(-1, basis.shape[1]))
    return projected.view(-1, basis.shape[1])


def projection_backward(lib, y0, dt_omega, damping, weight, basis, dt, grad_projected, need_basis, half=False):
    """Gradients of `projection` with respect to y0, dt_omega, damping, weight and (if
    need_basis) basis, given that of its output (B x C x H x W x K', any strides): each chunk
    recomputes its T steps and runs the adjoint steps backwards (models/nwm_fused.py has the
    equations). half: as in `projection`, the products with the basis in bfloat16."""
    T, (B, C, H, W) = basis.shape[0], y0.shape
    dtype = torch.bfloat16 if half else y0.dtype
    gy, g_dt_omega, g_damping = torch.zeros_like(y0), torch.zeros_like(y0), torch.zeros_like(y0)
    g_weight, g_basis = y0.new_zeros(B, *weight.shape), torch.zeros_like(basis) if need_basis else None
    adjoint_weight = weight.flip(2, 3).transpose(0, 1).contiguous()
    basis_in = basis.to(dtype)
    for chunk in _chunks(y0, T):
        n = chunk.stop - chunk.start
        g_chunk = grad_projected[chunk].reshape(-1, basis.shape[1]).to(dtype)  # a copy of the chunk's rows at most
        g_frames = basis_in @ g_chunk.t()  # T x (n*C*H*W)
        y, z, gz = y0[chunk], y0.new_zeros(n, C, H, W), y0.new_zeros(n, C, H, W)
        ys = y.new_empty(T + 1, *y.shape, dtype=dtype) if need_basis else None  # y_0..y_T of the chunk
        _parallel(lib.nwm_backward, n, H, W, T,
                  *_pointers(y, z, dt_omega[chunk], damping[chunk], weight, adjoint_weight), dt, g_frames.data_ptr(),
                  *_pointers(gy[chunk], gz, g_dt_omega[chunk], g_damping[chunk], g_weight[chunk]),
                  ys.data_ptr() if need_basis else None, half)
        if need_basis:
            g_basis += (ys[1:].view(T, -1) @ g_chunk).to(g_basis.dtype)
    return gy, g_dt_omega, g_damping, g_weight.sum(0), g_basis
