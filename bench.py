"""Training-step speed and memory: the project's models against a straightforward reference.

    python bench.py                         # every paper configuration, batch 64, this machine
    python bench.py --quick                 # about a minute on a laptop CPU: smaller batch, 1 step
    python bench.py --configs tetrominoes_nwm --device cuda --steps 20 --json bench.json
    python bench.py --configs mnist_nwm mnist_cnn16 multi_mnist_unet3 --no-reference   # any dataset x model
    python bench.py --numerics results/runs/polygons/nwm-linear-T100-h16-seed0 --batch-size 8   # precision
    python bench.py --per-gpu 1 2 4 -- --epochs 2 --train-size 512   # launch.py, runs in a temporary folder

For each configuration it times full training steps (forward, cross-entropy, backward,
Adam step) of
  (a) the project's model as train.py trains it (fused NWM recurrence, automatic BPTT
      segments, tuned CPU allocator, bfloat16 autocast where it is fast), with eager steps
      and, on CUDA, also with each step replayed from a CUDA graph ("graphed"), and
  (b) the straightforward implementation of the same equations in models/reference.py:
      a per-step Python loop, plain float32, the sequence stacked and permuted for the
      readout, the system allocator,
after checking that (b), loaded with (a)'s weights, gives the same outputs and gradients.
It also times (a)'s matrix products alone, in the same process after its steps: every
mm/addmm/bmm of one step is recorded (shapes, strides, dtypes) and replayed on random
operands. Their time is the step's floor on this hardware, and `floor_ratio` (step /
floor) says how far the whole step is from it. Where the NWM's CPU kernel runs its coupling
as bfloat16 products (--bf16-coupling on), those count too, as the matrix products they are
(per step and image, its 3x3 neighbourhoods times the weight: forward, recompute, input and
weight gradients).
It also times (a)'s evaluation pass (forward, no gradients, as train.py validates) and
prints minutes per paper epoch: the paper's training split at the training rate plus its
validation split at the evaluation rate.
With --numerics RUN (or DATASET: the paper's NWM for it, at initialisation) it measures what
the speed costs in precision instead: the relative error against float64, over all T steps
of a batch of validation images, of y_T, the loss and every parameter's gradient, in
float32, in bfloat16 autocast, and in autocast with the bfloat16 coupling.
Every measurement runs in its own process, so each gets its own allocator settings and
its peak memory (GPU: max allocated; CPU, Linux: the rise of the peak resident set size
over the process's size before the first step) is its own.
With --per-gpu N... it times the launcher instead: a 4-run Tetrominoes ConvLSTM grid (launch.py --grid
tetrominoes/lstm --seeds 2, with the train.py flags after --) at N runs at once on one GPU (or the CPU).
"""
import argparse
import contextlib
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from cli import HelpFormatter, add_device, add_threads, int_at_least, run_main
from configs import BENCH_CONFIGS, model_config
from cuda_graphs import GraphedTrainStep
import runs
from dataset_config import DATASETS, get_info, load_dataset
from engine import TrainStep, autocast, set_backends
from models import MODEL_NAMES, build_model, common, cpu_kernels, head_cpu, is_recurrent, nwm_cpu
from models.common import auto_bptt_segment
from models.reference import build_reference, copy_weights
from settings import bf16_supported, device_name, pick_device, set_threads, tune_cpu_allocator

REPO = Path(__file__).resolve().parent

# the number after a model's name in a configuration name: which setting it sets
NUMBERED = {"cnn": "depth", "unet": "width"}


def parse_config(name):
    """(dataset, model, settings other than the paper's) of a configuration: a name of
    configs.BENCH_CONFIGS, or DATASET_MODEL[N] for any dataset and model, N the CNN's depth or
    the U-Net's width (mnist_cnn16, multi_mnist_unet3); ValueError says what is valid."""
    if name in BENCH_CONFIGS:
        return BENCH_CONFIGS[name]
    datasets = [d for d in sorted(DATASETS, key=len, reverse=True) if name.startswith(d + "_")]
    match = re.fullmatch(r"([a-z]+)(\d*)", name[len(datasets[0]) + 1:]) if datasets else None
    if not match or match[1] not in MODEL_NAMES or (match[2] and match[1] not in NUMBERED):
        raise ValueError(f"unknown configuration {name!r}: write DATASET_MODEL[N] with a dataset of "
                         f"{', '.join(DATASETS)} and a model of {', '.join(MODEL_NAMES)}, N the depth of cnn or "
                         f"the width of unet (e.g. mnist_cnn16, multi_mnist_unet3), or one of {', '.join(BENCH_CONFIGS)}")
    model, number = match[1], match[2]
    return datasets[0], model, ({NUMBERED[model]: int(number)} if number else {})


def config_name(text):
    """argparse type of --configs: a configuration name that parse_config understands."""
    try:
        parse_config(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def bench_config(name):
    """(model name, build_model keywords, image size) of a configuration (parse_config)."""
    dataset, model, overrides = parse_config(name)
    return model, model_config(dataset, model, **overrides), get_info(dataset).image_size


def paper_epoch_minutes(name, train_images_per_second, eval_images_per_second):
    """Minutes of one paper epoch: the paper's training split at the training rate and its
    validation split at the evaluation rate."""
    train, val, _ = get_info(parse_config(name)[0]).paper_split_sizes
    return (train / train_images_per_second + val / eval_images_per_second) / 60


def build_project(name, batch_size, device):
    """The project's model as train.py builds it, --bptt-segment auto included."""
    model, config, size = bench_config(name)
    if is_recurrent(model):
        config["bptt_segment"] = auto_bptt_segment(True, batch_size, config["T"], config["hidden_channels"], size,
                                                   device)
    return build_model(model, **config).to(device)


def check_equivalence(name, device, batch=2, size=32):
    """The reference computes what the project computes: outputs and gradients (in float64,
    on smaller images: the equations do not depend on the image size)."""
    model_name, config, _ = bench_config(name)
    torch.manual_seed(0)
    project = build_project(name, batch, device).double()
    reference = build_reference(model_name, **config).to(device).double()
    copy_weights(project, reference)
    x = torch.rand(batch, config["in_channels"], size, size, device=device, dtype=torch.float64)
    target = torch.randint(0, config["num_classes"], (batch, size, size), device=device)
    results = []
    for model in (project, reference):
        logits = model(x)
        F.cross_entropy(logits, target).backward()
        results.append((logits.detach(), [p.grad for p in model.parameters()]))
    (a, ga), (b, gb) = results
    out_err = ((a - b).abs().max() / a.abs().max()).item()
    gb = [q if q.shape == p.shape else q.t() for p, q in zip(ga, gb)]
    grad_err = max(((p - q).abs().max() / (p.abs().max() + 1e-30)).item() for p, q in zip(ga, gb))
    if out_err > 1e-8 or grad_err > 1e-6:
        raise AssertionError(f"reference and project differ: outputs {out_err:.2e}, gradients {grad_err:.2e}")
    return out_err, grad_err


def _status_kib(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def reset_peak_rss():
    """Start a new peak-RSS measurement; returns the resident size now, in bytes.

    Linux: writing 5 to clear_refs resets the high-water mark (VmHWM) to the current size.
    (ru_maxrss cannot be reset, and survives exec: a child would inherit its parent's peak.)
    """
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_kib("VmRSS") * 1024


def peak_rss_bytes():
    return _status_kib("VmHWM") * 1024


class RecordMatmuls(TorchDispatchMode):
    """Records every matrix product run under it: (op, operands as (size, stride, dtype) or values)."""

    OPS = {torch.ops.aten.mm.default, torch.ops.aten.mm.out, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default,
           torch.ops.aten.baddbmm.default}  # (mm.out: the kernels' projections write into their results)
    if head_cpu.applies_anywhere():  # the fused head's products (bias, ReLU or mask applied inside)
        OPS |= {torch.ops.mkldnn._linear_pointwise.default, torch.ops.mkldnn._linear_pointwise.binary}

    def __init__(self):
        super().__init__()
        self.calls = []

    @staticmethod
    def operand_spec(a):
        return (a.size(), a.stride(), a.dtype) if isinstance(a, torch.Tensor) else a

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.OPS:
            spec = self.operand_spec
            self.calls.append((func, [spec(a) for a in args], {k: spec(v) for k, v in (kwargs or {}).items()}))
        return func(*args, **(kwargs or {}))


class RecordCoupling:
    """Adds the products of the NWM kernel's coupling, where it runs them in bfloat16, to a
    recorder's calls, as the matrix products they are (the kernel runs one image at a time):
    for each of T steps and B images, the H x W 3x3 neighbourhoods of C channels times the
    9C x C weight, once in the forward pass and twice in the backward (recompute, input
    gradient), and the weight gradient's product (9C x HW times HW x C) once."""

    def __init__(self, recorder):
        self.recorder = recorder
        self.patched = {}

    def _spy(self, name, stencil_products, weight_products):
        original = getattr(nwm_cpu, name)

        def spy(lib, y0, *args):
            if args[-1]:  # half_coupling, the last argument of both
                (B, C, H, W), T = y0.shape, args[3].shape[0]  # args[3]: the time basis
                pixels, taps = H * W, 9 * C
                stencil = [((pixels, taps), (taps, 1), torch.bfloat16), ((taps, C), (C, 1), torch.bfloat16)]
                weight = [((taps, pixels), (pixels, 1), torch.bfloat16), ((pixels, C), (C, 1), torch.bfloat16)]
                self.recorder.calls += [(torch.ops.aten.mm.default, stencil, {})] * (B * T * stencil_products)
                self.recorder.calls += [(torch.ops.aten.mm.default, weight, {})] * (B * T * weight_products)
            return original(lib, y0, *args)

        self.patched[name] = original
        setattr(nwm_cpu, name, spy)

    def __enter__(self):
        self._spy("projection", 1, 0)
        self._spy("projection_backward", 2, 1)
        return self

    def __exit__(self, *exc):
        for name, original in self.patched.items():
            setattr(nwm_cpu, name, original)


def time_matmuls(calls, repeats, device):
    """Median seconds of running the recorded matrix products once, on random operands."""
    operands = {}

    def operand(spec):
        if not isinstance(spec, tuple):
            return spec
        if spec not in operands:
            size, stride, dtype = spec
            operands[spec] = torch.empty_strided(size, stride, dtype=dtype, device=device).normal_()
        return operands[spec]

    prepared = [(func, [operand(a) for a in args], {k: operand(v) for k, v in kwargs.items()})
                for func, args, kwargs in calls]
    times = []
    for _ in range(repeats + 1):  # the first: warm-up
        start = time.perf_counter()
        for func, args, kwargs in prepared:
            func(*args, **kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    times = sorted(times[1:])
    return times[len(times) // 2]


def time_evaluation(model, x, amp, repeats, device):
    """Median seconds of the model's forward pass on x as train.py validates (eval mode, no
    gradients, autocast as in training), after one warm-up."""
    model.eval()
    times = []
    with torch.no_grad():
        for _ in range(repeats + 1):
            start = time.perf_counter()
            with autocast(device, amp):
                model(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    model.train()
    times = sorted(times[1:])
    return times[len(times) // 2]


def warm_up(step, device, most=5, settled_pages=2560):
    """Runs `step` until one maps fewer than `settled_pages` new pages (10 MB), at most `most` times. On the
    CPU the allocator's heap takes a few steps to reach its size, and each page a step touches for the first
    time is a page fault (a 1.5x slower step on our VMs: docs/speed.md, "Notes moved from the code")."""
    for _ in range(most):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        step()
        if device.type != "cpu" or resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before < settled_pages:
            return


def measure(config_name, impl, batch_size, steps, device):
    """One (configuration, implementation) in this process: seconds per step and peak memory.
    impl: "project" (as train.py trains, eager steps), "graphed" (the same, each step replayed
    from a CUDA graph: CUDA only) or "reference" (models/reference.py, plain float32)."""
    model_name, config, (H, W) = bench_config(config_name)
    device = torch.device(device)
    amp = impl != "reference" and bf16_supported(device)
    torch.manual_seed(0)
    if impl == "reference":
        model = build_reference(model_name, **config).to(device)
    else:
        model = build_project(config_name, batch_size, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, capturable=impl == "graphed")
    x = torch.rand(batch_size, config["in_channels"], H, W, device=device)
    target = torch.randint(0, config["num_classes"], (batch_size, H, W), device=device)
    train_step = GraphedTrainStep(model, optimizer, amp, x, target) if impl == "graphed" else \
        TrainStep(model, optimizer, amp)

    def step():
        train_step(x, target)
        if device.type == "cuda":
            torch.cuda.synchronize()

    base = reset_peak_rss() if device.type == "cpu" else 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    warm_up(step, device)  # allocations, kernel selection
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    times.sort()
    seconds = times[len(times) // 2]
    # Linux syncs a thread's RSS count in batches of up to 64 pages: a step that allocates nothing new
    # can read as a few hundred KiB below zero
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else max(peak_rss_bytes() - base, 0)
    result = dict(seconds_per_step=seconds, images_per_second=batch_size / seconds, peak_memory_bytes=peak, amp=amp)
    if impl == "project":
        result["eval_images_per_second"] = batch_size / time_evaluation(model, x, amp, steps, device)
        with RecordMatmuls() as recorder, RecordCoupling(recorder):
            step()
        result["matmul_seconds"] = time_matmuls(recorder.calls, max(steps, 5), device)
        result["matmul_calls"] = len(recorder.calls)
        result["kernel_compile_seconds"] = sum(cpu_kernels.compile_seconds.values())
    return result


def run_worker(config_name, impl, batch_size, steps, device, threads, bf16_coupling):
    """measure() in a fresh process; {"error": why} if it died (e.g. out of memory)."""
    cmd = [sys.executable, __file__, "--worker", config_name, impl, "--batch-size", str(batch_size),
           "--steps", str(steps), "--device", device, "--threads", str(threads), "--bf16-coupling", bf16_coupling]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        last_line = (result.stderr.strip().splitlines() or ["no message"])[-1]
        return {"error": "killed (out of memory?)" if result.returncode < 0 else last_line}
    return json.loads(result.stdout.strip().splitlines()[-1])


def precision_errors(source, batch_size, data_root=None):
    """{variant: relative errors against float64} of an NWM (a run directory's trained model, or the
    paper's NWM for dataset `source` at initialisation, seed 0) on the first `batch_size` validation
    images: y_T (the state after the last step), the cross-entropy loss, every parameter's gradient."""
    torch.manual_seed(0)
    if Path(source).is_dir():
        model, config = runs.load_model(source)
        dataset = config["dataset"]
    else:
        model, dataset = build_model("nwm", **model_config(source, "nwm")), source
    images, masks = load_dataset(dataset, "val", data_root, limit=batch_size)
    model.train()

    def last_state(dtype, bf16_coupling):
        """y_T from the CPU kernel: the frames projected on a basis that picks the last step."""
        with torch.no_grad():
            omega, alpha, y, _ = model.initial_state(images.to(dtype))
            basis = torch.zeros(model.T, 1, dtype=dtype)
            basis[-1] = 1
            weight, lib = model.coupling.weight.to(dtype).contiguous(), nwm_cpu.kernel(y)
            out = nwm_cpu.projection(lib, y, model.dt * omega, 1 - model.dt * alpha, weight, basis, model.dt,
                                     half_coupling=nwm_cpu.half_coupling(lib, y.shape[1], bf16_coupling))
        return out.view(y.shape).double()

    def run(dtype, amp, bf16_coupling):
        common.allow_bf16_coupling(bf16_coupling)
        model.to(dtype).zero_grad()
        with autocast("cpu", amp):
            loss = F.cross_entropy(model(images.to(dtype)).double(), masks)
        loss.backward()
        return (last_state(dtype, bf16_coupling), loss.item(),
                {name: p.grad.double().clone() for name, p in model.named_parameters()})

    def relative(a, b):
        return ((a - b).norm() / b.norm()).item()

    exact = run(torch.float64, False, False)
    errors = {}
    for name, settings in {"float32": (torch.float32, False, False), "bf16 autocast": (torch.float32, True, False),
                           "bf16 autocast, bf16 coupling": (torch.float32, True, True)}.items():
        state, loss, grads = run(*settings)
        errors[name] = dict(y_T=relative(state, exact[0]), loss=abs(loss - exact[1]) / abs(exact[1]),
                            gradients={k: relative(g, exact[2][k]) for k, g in grads.items()})
    common.allow_bf16_coupling(False)
    return dict(source=str(source), dataset=dataset, images=len(images), errors=errors)


def per_gpu_rates(counts, device, root, train_args):
    """{N: the images/s of each run's last epoch, their sum over the runs at once, and the grid's wall-clock
    seconds} of the 4-run ConvLSTM grid run by launch.py at N runs at once, on one GPU (or the CPU), under
    root/per_gpu_N."""
    import launch  # here: only this measurement needs it
    gpus = list(launch.visible_gpus())[:1] if device.type == "cuda" else []  # what one GPU gives
    record = {}
    for n in counts:
        grid_root, start = root / f"per_gpu_{n}", time.perf_counter()
        subprocess.run([sys.executable, "launch.py", "--grid", "tetrominoes/lstm", "--seeds", "2", "--per-gpu", str(n),
                        "--python", sys.executable, "--", "--device", str(device), "--runs-root", str(grid_root),
                        "--restart", *train_args],  # afresh: a finished run of an earlier call would be skipped
                       cwd=REPO, env=dict(os.environ, CUDA_VISIBLE_DEVICES=",".join(gpus)), check=True)
        rates = []
        for run in runs.find_runs(grid_root):
            config, last = runs.load_json(run / runs.CONFIG), runs.load_metrics(run)[-1]
            rates.append(config["train_size"] // config["batch_size"] * config["batch_size"] / float(last["seconds"]))
        record[n] = dict(images_per_second_per_run=rates, wall_seconds=time.perf_counter() - start,
                         aggregate_images_per_second=sum(rates) / -(-len(rates) // n))
        print(f"--per-gpu {n}: {record[n]['aggregate_images_per_second']:.0f} images/s over the runs at once, "
              f"the grid in {record[n]['wall_seconds']:.0f} s")
    return record


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--configs", nargs="+", type=config_name, default=list(BENCH_CONFIGS), metavar="CONFIG",
                   help=f"configurations: {', '.join(BENCH_CONFIGS)} (the default), or any DATASET_MODEL[N] "
                        f"(N: the CNN's depth or the U-Net's width), e.g. mnist_nwm mnist_lstm mnist_cnn16 "
                        f"multi_mnist_unet2")
    p.add_argument("--bf16-coupling", default="off", choices=["off", "on"],
                   help="the NWM CPU kernel's coupling as bfloat16 products where autocast and the CPU's "
                        "AVX512-BF16 allow (on), or float32 (off, as train.py by default)")
    add_device(p)
    add_threads(p)  # of every measurement: run_worker passes --device and --threads on to each worker
    p.add_argument("--batch-size", type=int_at_least(1), default=None, help="images per step (default: 64, --quick: 8)")
    p.add_argument("--steps", type=int_at_least(1), default=None,
                   help="timed steps after the warm-up (on the CPU: until a step maps no new memory, at most 5) "
                        "(default: 3, --quick: 1)")
    p.add_argument("--quick", action="store_true", help="batch 8, one timed step: about a minute on a CPU")
    p.add_argument("--no-check", dest="check", action="store_false", help="skip the equivalence check")
    p.add_argument("--no-reference", dest="reference", action="store_false",
                   help="time the project's steps only (eager, and graphed on CUDA), not the reference's")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the numbers to this JSON file")
    p.add_argument("--numerics", metavar="RUN_OR_DATASET", default=None,
                   help="measure precision instead of speed: float32, bfloat16 autocast and the bfloat16 coupling "
                        "against float64 over all T steps, for a trained NWM (a run directory) or the paper's NWM of "
                        "a dataset at initialisation, on --batch-size validation images (default 4)")
    p.add_argument("--per-gpu", nargs="+", type=int_at_least(1), metavar="N",
                   help="time launch.py instead: a 4-run ConvLSTM grid at N runs at once, for each N, on one GPU "
                        "(or the CPU), with the train.py flags after --")
    p.add_argument("--keep-runs", metavar="DIR", default=None,
                   help="with --per-gpu: keep the runs in DIR/per_gpu_N (default: a temporary folder, deleted after, "
                        "so that no score table counts them)")
    p.add_argument("train_args", nargs="*", metavar="-- TRAIN.PY ARGS", help="with --per-gpu: train.py flags")
    p.add_argument("--worker", nargs=2, metavar=("CONFIG", "IMPL"), help=argparse.SUPPRESS)
    return p


def main(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    batch_size = args.batch_size or (8 if args.quick else 64)
    steps = args.steps or (1 if args.quick else 3)
    threads = set_threads(args.threads)
    try:
        device = pick_device(args.device)
    except ValueError as e:
        p.error(f"--device: {e}")
    set_backends(device)  # as train.py does
    common.allow_bf16_coupling(args.bf16_coupling == "on")

    if args.numerics:
        result = precision_errors(args.numerics, args.batch_size or 4)
        for name, e in result["errors"].items():
            grads = sorted(e["gradients"].values())
            print(f"{name:30s} y_T {e['y_T']:.1e}  loss {e['loss']:.1e}  coupling gradient "
                  f"{e['gradients']['coupling.weight']:.1e}  gradients median {grads[len(grads) // 2]:.1e} "
                  f"max {grads[-1]:.1e}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(dict(result, cpu=device_name("cpu"), torch=torch.__version__, threads=threads), f, indent=2)
        return

    if args.per_gpu:
        with contextlib.nullcontext(args.keep_runs) if args.keep_runs else tempfile.TemporaryDirectory(
                prefix="per_gpu_") as root:
            result = per_gpu_rates(args.per_gpu, device, Path(root), args.train_args)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(dict(device=str(device), device_name=device_name(device), per_gpu=result), f, indent=2)
        return

    if args.worker:  # one measurement, in its own process
        config_name, impl = args.worker
        if impl == "project":
            tune_cpu_allocator()  # as train.py does
        print(json.dumps(measure(config_name, impl, batch_size, steps, device)))
        return

    hardware = dict(device=str(device), device_name=device_name(device), cpu=device_name("cpu"),
                    cpu_features=cpu_kernels.cpu_features(), kernel_flags=cpu_kernels.compile_flags())
    print(f"device {device} ({hardware['device_name']}), torch {torch.__version__}, {threads} CPU thread(s), "
          f"batch {batch_size}, median of {steps} step(s); CPU features {' '.join(hardware['cpu_features'])}")
    results = []
    for name in args.configs:
        row = {"config": name, "batch_size": batch_size}
        if args.check:
            row["check_output_err"], row["check_grad_err"] = check_equivalence(name, device)
        impls = ("project", "graphed") if device.type == "cuda" else ("project",)
        for impl in impls + (("reference",) if args.reference else ()):
            row[impl] = run_worker(name, impl, batch_size, steps, str(device), threads, args.bf16_coupling)
        if "error" not in row["project"] and "error" not in row.get("graphed", {"error": "not run"}):
            row["graph_speedup"] = row["project"]["seconds_per_step"] / row["graphed"]["seconds_per_step"]
        b = row.get("reference", {"error": "not run"})
        for impl, key in (("project", "speedup"), ("graphed", "speedup_graphed")):
            a = row.get(impl, {"error": "not run"})
            if "error" not in a and "error" not in b:
                row[key] = b["seconds_per_step"] / a["seconds_per_step"]
                row[key.replace("speedup", "memory_ratio")] = b["peak_memory_bytes"] / max(a["peak_memory_bytes"], 1)
        if row["project"].get("matmul_calls"):  # (the U-Net has none: its floor would be its convolutions)
            row["floor_ratio"] = row["project"]["seconds_per_step"] / row["project"]["matmul_seconds"]
        if "error" not in row["project"]:
            row["paper_epoch_minutes"] = paper_epoch_minutes(name, row["project"]["images_per_second"],
                                                             row["project"]["eval_images_per_second"])
        results.append(row)
        print(format_row(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(hardware, torch=torch.__version__, threads=threads, batch_size=batch_size,
                           steps=steps, bf16_coupling=args.bf16_coupling, results=results), f, indent=2)


def format_row(row):
    def side(r):
        if "error" in r:
            return f"{'failed: ' + r['error']:>38}"
        return (f"{r['seconds_per_step']:7.3f} s {r['images_per_second']:7.1f} img/s "
                f"{r['peak_memory_bytes'] / 2**20:8.0f} MiB")
    ratios = (f"  speed x{row['speedup']:.2f}  memory /{row['memory_ratio']:.2f}" if "speedup" in row else "")
    ratios += f"  floor x{row['floor_ratio']:.2f}" if "floor_ratio" in row else ""
    graphed = f" | graphed {side(row['graphed'])}" if "graphed" in row else ""
    ratios += f"  graphed x{row['speedup_graphed']:.2f}" if "speedup_graphed" in row else ""
    ratios += f"  graph/eager x{row['graph_speedup']:.2f}" if "graph_speedup" in row else ""
    reference = f" | reference {side(row['reference'])}" if "reference" in row else ""
    if "paper_epoch_minutes" in row:
        ratios += (f"  eval {row['project']['eval_images_per_second']:.1f} img/s"
                   f"  paper epoch {row['paper_epoch_minutes']:.1f} min")
    return f"{row['config']:18s} project {side(row['project'])}{graphed}{reference}{ratios}"


if __name__ == "__main__":
    run_main(main)
