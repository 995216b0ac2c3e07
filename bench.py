"""Training-step speed and memory: the project's models against a straightforward reference.

    python bench.py                         # every paper configuration, batch 64, this machine
    python bench.py --quick                 # about a minute on a laptop CPU: smaller batch, 1 step
    python bench.py --configs tetrominoes_nwm --device cuda --steps 20 --json bench.json

For each configuration it times full training steps (forward, cross-entropy, backward,
Adam step) of
  (a) the project's model as train.py trains it (fused NWM recurrence, automatic BPTT
      segments, tuned CPU allocator, bfloat16 autocast where it is fast), and
  (b) a straightforward implementation of the same equations kept in this file: a
      per-step Python loop, plain float32, the sequence stacked and permuted for the
      readout, the system allocator,
after checking that (b), loaded with (a)'s weights, gives the same outputs and gradients.
Every measurement runs in its own process, so each gets its own allocator settings and
its peak memory (GPU: max allocated; CPU, Linux: the rise of the peak resident set size
over the process's size before the first step) is its own.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine import autocast, bf16_supported, tune_cpu_allocator
from models import build_model, is_recurrent
from models.unet import UNet
from train import auto_bptt_segment

CONFIGS = {  # the paper's configurations (SPEC sections 2 and 3)
    "tetrominoes_nwm": dict(model="nwm", in_channels=3, num_classes=6, size=64, T=100, hidden_channels=2),
    "tetrominoes_lstm": dict(model="lstm", in_channels=3, num_classes=6, size=64, T=20, hidden_channels=2),
    "tetrominoes_cnn8": dict(model="cnn", in_channels=3, num_classes=6, size=64, T=100, hidden_channels=2, depth=8),
    "multi_mnist_nwm": dict(model="nwm", in_channels=1, num_classes=11, size=128, T=100, hidden_channels=16,
                            readout_width=32, readout_depth=5),
    "multi_mnist_unet4": dict(model="unet", in_channels=1, num_classes=11, size=128, width=4),
}


# ---------------------------------------------------------------- straightforward reference

def ref_convs(c_in, c_mid, c_out, n, last):
    layers, c = [], c_in
    for i in range(n):
        layers += [nn.Conv2d(c, c_out if i == n - 1 else c_mid, 3, padding=1)]
        layers += [nn.ReLU()] if i < n - 1 else ([last] if last else [])
        c = c_mid
    return nn.Sequential(*layers)


def ref_head(d, classes, width, depth):
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(d, width), nn.ReLU()]
        d = width
    return nn.Sequential(*layers, nn.Linear(d, classes))


class RefNWM(nn.Module):
    def __init__(self, in_channels, num_classes, T, hidden_channels, c_mid=16, dt=0.1,
                 readout_width=256, readout_depth=3):
        super().__init__()
        c, self.T, self.dt = hidden_channels, T, dt
        self.omega = ref_convs(in_channels, c_mid, c, 3, nn.ReLU())
        self.alpha = ref_convs(in_channels, c_mid, c, 3, nn.ReLU())
        self.position = ref_convs(in_channels, c_mid, c, 4, nn.Tanh())
        self.W = nn.Conv2d(c, c, 3, padding=1, padding_mode="circular", bias=False)
        self.time = nn.Linear(T, T // 2 + 1, bias=False)
        self.head = ref_head(c * (T // 2 + 1), num_classes, readout_width, readout_depth)

    def forward(self, x):
        omega, alpha, y = self.omega(x), self.alpha(x), self.position(x)
        z, ys = torch.zeros_like(y), []
        for _ in range(self.T):
            z = z + self.dt * (torch.tanh(self.W(y)) - omega * y - alpha * z)
            y = y + self.dt * z
            ys.append(y)
        seq = torch.stack(ys, dim=1)  # B T C H W
        features = self.time(seq.permute(0, 3, 4, 2, 1)).flatten(3)  # B H W C T -> B H W (C K)
        return self.head(features).permute(0, 3, 1, 2)


class RefConvLSTM(nn.Module):
    def __init__(self, in_channels, num_classes, T, hidden_channels, c_mid=16, readout_width=256, readout_depth=3):
        super().__init__()
        c, self.T = hidden_channels, T
        self.u0 = ref_convs(in_channels, c_mid, c, 4, nn.Tanh())
        self.h0 = ref_convs(in_channels, c_mid, c, 3, None)
        self.c0 = ref_convs(in_channels, c_mid, c, 3, None)
        self.gates = nn.Conv2d(2 * c, 4 * c, 3, padding=1, padding_mode="circular")
        self.mlp = nn.Sequential(nn.Conv2d(c, 2 * c, 1), nn.ReLU(), nn.Conv2d(2 * c, c, 1))
        self.time = nn.Linear(T, T // 2 + 1, bias=False)
        self.head = ref_head(c * (T // 2 + 1), num_classes, readout_width, readout_depth)

    def forward(self, x):
        u, h, cell, us = self.u0(x), self.h0(x), self.c0(x), []
        for _ in range(self.T):
            i, f, o, g = self.gates(torch.cat([u, h], 1)).chunk(4, 1)
            cell = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(cell)
            u = self.mlp(h)
            us.append(u)
        seq = torch.stack(us, dim=1)
        features = self.time(seq.permute(0, 3, 4, 2, 1)).flatten(3)  # B H W C T -> B H W (C K)
        return self.head(features).permute(0, 3, 1, 2)


class RefCNN(nn.Module):
    def __init__(self, in_channels, num_classes, T, hidden_channels, depth, c_mid=16, readout_width=256,
                 readout_depth=3):
        super().__init__()
        self.trunk = ref_convs(in_channels, c_mid, hidden_channels, depth, nn.ReLU())
        self.expand = nn.Conv2d(hidden_channels, (T // 2 - 1) * hidden_channels, 1)
        self.head = ref_head((T // 2 - 1) * hidden_channels, num_classes, readout_width, readout_depth)

    def forward(self, x):
        return self.head(self.expand(self.trunk(x)).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def build_reference(config):
    kw = {k: v for k, v in config.items() if k not in ("model", "size")}
    if config["model"] == "unet":
        return UNet(**kw)  # nothing to fuse or reorder: the standard U-Net is its own reference
    return {"nwm": RefNWM, "lstm": RefConvLSTM, "cnn": RefCNN}[config["model"]](**kw)


def copy_weights(source, target):
    """Project model -> reference: the same parameters, registered in the same order (the
    reference's nn.Linear over time holds the project's T x K readout matrix transposed)."""
    src, dst = list(source.parameters()), list(target.parameters())
    assert len(src) == len(dst), (len(src), len(dst))
    with torch.no_grad():
        for s, d in zip(src, dst):
            d.copy_(s if s.shape == d.shape else s.t())


# ---------------------------------------------------------------- measurement

def build_project(config, batch_size, device):
    kw = {k: v for k, v in config.items() if k not in ("model", "size")}
    if is_recurrent(config["model"]):  # as train.py's --bptt-segment auto
        kw["bptt_segment"] = auto_bptt_segment(config["model"], batch_size, config["T"], config["hidden_channels"],
                                               (config["size"], config["size"]))
    return build_model(config["model"], **kw).to(device)


def check_equivalence(config, device, batch=2, size=32):
    """The reference computes what the project computes: outputs and gradients (in float64,
    on smaller images: the equations do not depend on the image size)."""
    torch.manual_seed(0)
    project = build_project(config, batch, device).double()
    reference = build_reference(config).to(device).double()
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


def measure(config_name, impl, batch_size, steps, device):
    """One (configuration, implementation) in this process: seconds per step and peak memory."""
    config = CONFIGS[config_name]
    device = torch.device(device)
    amp = impl == "project" and bf16_supported(device)
    torch.manual_seed(0)
    model = build_project(config, batch_size, device) if impl == "project" else build_reference(config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(batch_size, config["in_channels"], config["size"], config["size"], device=device)
    target = torch.randint(0, config["num_classes"], (batch_size, config["size"], config["size"]), device=device)

    def step():
        with autocast(device, amp):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    base = reset_peak_rss() if device.type == "cpu" else 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step()  # warm-up: allocations, kernel selection
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    times.sort()
    seconds = times[len(times) // 2]
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else peak_rss_bytes() - base
    return dict(seconds_per_step=seconds, images_per_second=batch_size / seconds, peak_memory_bytes=peak, amp=amp)


def run_worker(config_name, impl, batch_size, steps, device):
    """measure() in a fresh process; None if it died (e.g. out of memory)."""
    cmd = [sys.executable, __file__, "--worker", config_name, impl, "--batch-size", str(batch_size),
           "--steps", str(steps), "--device", device]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        reason = "killed (out of memory?)" if result.returncode < 0 else result.stderr.strip().splitlines()[-1:]
        return {"error": str(reason)}
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS), help="configurations")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    p.add_argument("--batch-size", type=int, default=None, help="images per step (default: 64, --quick: 8)")
    p.add_argument("--steps", type=int, default=None, help="timed steps after one warm-up (default: 3, --quick: 1)")
    p.add_argument("--quick", action="store_true", help="batch 8, one timed step: about a minute on a CPU")
    p.add_argument("--no-check", dest="check", action="store_false", help="skip the equivalence check")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the numbers to this JSON file")
    p.add_argument("--worker", nargs=2, metavar=("CONFIG", "IMPL"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    batch_size = args.batch_size or (8 if args.quick else 64)
    steps = args.steps or (1 if args.quick else 3)

    if args.worker:  # one measurement, in its own process
        config_name, impl = args.worker
        if impl == "project":
            tune_cpu_allocator()  # as train.py does
        print(json.dumps(measure(config_name, impl, batch_size, steps, args.device)))
        return

    print(f"device {args.device} ({torch.cuda.get_device_name() if args.device.startswith('cuda') else 'cpu'}), "
          f"torch {torch.__version__}, batch {batch_size}, median of {steps} step(s)")
    results = []
    for name in args.configs:
        row = {"config": name, "batch_size": batch_size}
        if args.check:
            row["check_output_err"], row["check_grad_err"] = check_equivalence(CONFIGS[name], args.device)
        for impl in ("project", "reference"):
            row[impl] = run_worker(name, impl, batch_size, steps, args.device)
        a, b = row["project"], row["reference"]
        if "error" not in a and "error" not in b:
            row["speedup"] = b["seconds_per_step"] / a["seconds_per_step"]
            row["memory_ratio"] = b["peak_memory_bytes"] / max(a["peak_memory_bytes"], 1)
        results.append(row)
        print(format_row(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=args.device, torch=torch.__version__, batch_size=batch_size, steps=steps,
                           results=results), f, indent=2)


def format_row(row):
    def side(r):
        if "error" in r:
            return f"{'failed: ' + r['error']:>38}"
        return (f"{r['seconds_per_step']:7.3f} s {r['images_per_second']:7.1f} img/s "
                f"{r['peak_memory_bytes'] / 2**20:8.0f} MiB")
    ratios = (f"  speed x{row['speedup']:.2f}  memory /{row['memory_ratio']:.2f}" if "speedup" in row else "")
    return f"{row['config']:18s} project {side(row['project'])} | reference {side(row['reference'])}{ratios}"


if __name__ == "__main__":
    main()
