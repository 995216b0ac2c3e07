#!/usr/bin/env bash
# Checks the GPU path in under 9 minutes on a machine with a GPU and nothing prepared but this
# repository, its requirements and the four MNIST files (or the internet to download them). Every
# step runs under its own timeout, so one hang cannot eat the rest; each writes its log (and its
# JSON) into one folder, which is packed into one archive at the end (datasets and checkpoints left
# out).
#
#   bash scripts/gpu_check.sh [--mnist-from-dir DIR] [--out DIR]   # on the GPU machine
#   bash scripts/gpu_check.sh --dry-run                             # every step with its timeout
#   bash scripts/gpu_check.sh --device cpu                          # the steps a CPU can run, tiny
#
#   --device D           cuda (default), cuda:N, or cpu: tiny sizes, and the steps that need CUDA skipped
#   --dry-run            print the steps and their timeouts, run nothing
#   --mnist-from-dir DIR the four MNIST files, any form (default: downloaded, as data_scripts/download_mnist.py does)
#   --out DIR            where the logs, JSON and OUT.tar.gz go (default: runs/gpu_check_<time>)
#   --python PATH        interpreter (default: the repo's .venv/bin/python if present, else python3)
#   -h, --help           this text
#
# Reading the archive (tar xzf OUT.tar.gz): summary.json lists every step with its status (ok,
# failed, timed out, skipped), its seconds and its timeout, and gathers the steps' JSON:
#   resume.json         a run killed (SIGKILL) after its first epoch and resumed against the same run
#                       uninterrupted: "same" and the largest relative difference of any metric
#   graph_<model>.json  --cuda-graph and --compile for nwm (Multi-MNIST), lstm and unet (Tetrominoes):
#                       config.json's cuda_graph ("captured", or "failed: <reason>") and seconds per epoch
#   tf32.json           one training step of the Tetrominoes NWM in float32 with TF32 on and off: relative
#                       error of the logits and the largest of the weight gradients against float64
#   bench.json          bench.py, eager against CUDA-graphed steps (graph_speedup) for tetrominoes_nwm,
#                       tetrominoes_lstm, tetrominoes_cnn8 and multi_mnist_nwm
#   per_gpu.json        a 4-run Tetrominoes LSTM grid with --per-gpu 1, 2 and 4 on one GPU: images/s of
#                       each run's last epoch, their sum, and the grid's wall-clock seconds
# and <step>.log is each step's output (cuda_tests.log: pytest tests/test_cuda.py).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SYNOPSIS="$0 [--device D] [--dry-run] [--mnist-from-dir DIR] [--out DIR] [--python PATH]"

# name, timeout in seconds, what it does; the timeouts add up to 9 minutes
STEPS=(
  "data 40 Tetrominoes and Multi-MNIST, small, made from scratch (MNIST downloaded or --mnist-from-dir)"
  "cuda_tests 60 pytest tests/test_cuda.py (graphed = eager, models on CUDA, kill and resume)"
  "resume 45 a tiny NWM run killed after its first epoch and resumed, against it uninterrupted"
  "graph_nwm 60 one epoch of the Multi-MNIST NWM, --cuda-graph auto --compile on"
  "graph_lstm 60 one epoch of the Tetrominoes ConvLSTM, --cuda-graph auto --compile on"
  "graph_unet 60 one epoch of the Multi-MNIST U-Net, --cuda-graph auto --compile on"
  "tf32 25 one Tetrominoes NWM step in float32, TF32 on and off, against float64"
  "bench 90 bench.py eager vs graphed: tetrominoes_nwm, tetrominoes_lstm, tetrominoes_cnn8, multi_mnist_nwm"
  "per_gpu 90 a 4-run ConvLSTM grid with --per-gpu 1, 2 and 4: aggregate images/s"
)
CUDA_ONLY=" cuda_tests "  # nothing to run on a CPU (the tests skip themselves)

device=cuda dry_run=0 out="" mnist_dir=""
step_name=""
while (($#)); do
  case $1 in
    --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}"; continue ;;
    -h | --help) echo "usage: $SYNOPSIS"; echo; header "$SCRIPT"; exit 0 ;;
    --device) set_value device "$@"; shift ;;
    --dry-run) dry_run=1 ;;
    --mnist-from-dir) set_value mnist_dir "$@"; shift ;;
    --out) set_value out "$@"; shift ;;
    --python) set_value PYTHON "$@"; shift ;;
    --step) set_value step_name "$@"; shift ;;  # internal: run one step (under its timeout)
    *) usage_error "unknown option '$1'" ;;
  esac
  shift
done
resolve_python
[[ $device =~ ^(cpu|cuda(:[0-9]+)?)$ ]] || usage_error "--device must be cuda, cuda:N or cpu, not '$device'"
out=${out:-runs/gpu_check_$(date +%Y%m%d-%H%M%S)}
data=$out/data
cpu=0
[[ $device != cpu ]] || cpu=1

# Sizes: what a GPU does in seconds, or (--device cpu) what shows on a CPU that every step starts;
# there, the timeouts are 4 times longer (torch.compile builds C++ for a CPU).
if ((cpu)); then
  sizes=(--train-size 16 --val-size 16 --batch-size 8)
  recurrent=(--T 6 --c-mid 4 --readout-width 8 --readout-depth 1)
  splits=(--train 32 --val 16 --test 16)
  bench_args=(--batch-size 1 --steps 1)
  slower=4
  export CUDA_VISIBLE_DEVICES=""  # the per-gpu grid on the CPU
else
  sizes=(--train-size 512 --val-size 128 --batch-size 32)
  recurrent=()
  splits=(--train 1024 --val 128 --test 128)
  bench_args=(--steps 5)
  slower=1
fi
train=("$PYTHON" train.py --device "$device" --data-root "$data" --no-progress --min-epochs 0 "${sizes[@]}")

# json_set FILE KEY=VALUE...: FILE's JSON with the keys set (VALUE read as JSON where it parses).
json_set() {
  "$PYTHON" - "$@" <<'EOF'
import json, sys
from pathlib import Path
path = Path(sys.argv[1])
record = json.loads(path.read_text()) if path.is_file() else {}
for item in sys.argv[2:]:
    key, value = item.split("=", 1)
    try:
        record[key] = json.loads(value)
    except json.JSONDecodeError:
        record[key] = value
path.write_text(json.dumps(record, indent=2))
EOF
}

step_data() {
  "$PYTHON" data_scripts/create_tetrominoes.py --data-root "$data" "${splits[@]}"
  "$PYTHON" data_scripts/download_mnist.py --data-root "$data" ${mnist_dir:+--from-dir "$mnist_dir"}
  "$PYTHON" data_scripts/create_multi_mnist.py --data-root "$data" "${splits[@]}"
}

step_cuda_tests() {
  "$PYTHON" -m pytest -q tests/test_cuda.py
}

step_resume() {
  local args=(--dataset tetrominoes --epochs 3 --compile off --run-name r "${recurrent[@]}") pid rows=0
  "${train[@]}" "${args[@]}" --runs-root "$out/resume/uninterrupted"
  "${train[@]}" "${args[@]}" --runs-root "$out/resume/killed" &
  pid=$!
  while kill -0 "$pid" 2>/dev/null && ((rows < 2)); do  # the header and the first epoch
    sleep 0.1
    rows=$(wc -l <"$out/resume/killed/r/metrics.csv" 2>/dev/null || echo 0)
  done
  kill -9 "$pid" 2>/dev/null || { echo "error: the run ended before it could be killed" >&2; exit 1; }
  wait "$pid" || true
  echo "killed after $((rows - 1)) epoch(s); resuming"
  "${train[@]}" "${args[@]}" --runs-root "$out/resume/killed"
  "$PYTHON" - "$out/resume" "$out/resume.json" <<'EOF'
import csv, json, sys
from pathlib import Path
root, out = Path(sys.argv[1]), Path(sys.argv[2])
TEXT = {"seconds", "device_name", "precision", "threads"}
def numbers(run):
    with open(run / "metrics.csv") as f:
        rows = [float(v) for row in csv.DictReader(f) for k, v in row.items() if k not in TEXT]
    test = json.loads((run / "test_metrics.json").read_text())
    return rows + [v for k, v in sorted(test.items()) if isinstance(v, float)]
a, b = numbers(root / "uninterrupted" / "r"), numbers(root / "killed" / "r")
diff = max((abs(x - y) / max(abs(x), 1e-12) for x, y in zip(a, b)), default=0.0)
same = len(a) == len(b) and diff <= 1e-4
out.write_text(json.dumps(dict(same=same, max_relative_difference=diff, values=len(a)), indent=2))
print(f"resumed run vs uninterrupted: largest relative difference {diff:.2e} over {len(a)} values")
sys.exit(0 if same else 1)
EOF
}

# graph_run NAME TRAIN.PY-ARGS...: one epoch with --cuda-graph auto (capture as `on` does, and a failure
# recorded in config.json instead of ending the run) and --compile on; what happened into NAME.json.
graph_run() {
  local name=$1
  shift
  "${train[@]}" "$@" --epochs 1 --cuda-graph auto --compile on --runs-root "$out/$name" --run-name r
  "$PYTHON" - "$out/$name/r" "$out/$name.json" <<'EOF'
import csv, json, sys
from pathlib import Path
run, out = Path(sys.argv[1]), Path(sys.argv[2])
config = json.loads((run / "config.json").read_text())
with open(run / "metrics.csv") as f:
    seconds = [float(row["seconds"]) for row in csv.DictReader(f)]
record = {k: config.get(k) for k in ("model", "dataset", "device", "device_name", "cuda_graph", "compile",
                                     "precision", "tf32", "bptt_segment")}
out.write_text(json.dumps(dict(record, epoch_seconds=seconds), indent=2))
print(json.dumps(record))
EOF
}

step_graph_nwm() { graph_run graph_nwm --dataset multi_mnist --model nwm "${recurrent[@]}"; }
step_graph_lstm() { graph_run graph_lstm --dataset tetrominoes --model lstm "${recurrent[@]}"; }
step_graph_unet() { graph_run graph_unet --dataset multi_mnist --model unet; }

step_tf32() {
  "$PYTHON" - "$device" "$cpu" "$out/tf32.json" <<'EOF'
import copy, json, sys
import torch
import torch.nn.functional as F
from configs import model_config
from models import build_model
from settings import device_name, pick_device
device, tiny, out = pick_device(sys.argv[1]), sys.argv[2] == "1", sys.argv[3]
config = model_config("tetrominoes", "nwm", **(dict(T=6, readout_width=8) if tiny else {}))
size, batch = (16, 2) if tiny else (64, 16)
torch.manual_seed(0)
reference = build_model("nwm", **config).to(device).double()
x = torch.rand(batch, 3, size, size, device=device, dtype=torch.float64)
y = torch.randint(0, config["num_classes"], (batch, size, size), device=device)

def step(model, dtype):
    model.zero_grad(set_to_none=True)
    logits = model(x.to(dtype))
    F.cross_entropy(logits.double(), y).backward()
    return logits.detach().double(), [p.grad.double() for p in model.parameters()]

def error(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()

logits64, grads64 = step(reference, torch.float64)
result = dict(device=str(device), device_name=device_name(device), torch=torch.__version__)
for tf32 in (True, False):
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
    logits, grads = step(copy.deepcopy(reference).float(), torch.float32)
    result[f"tf32_{'on' if tf32 else 'off'}"] = dict(
        logits_error=error(logits, logits64), weight_gradient_error=max(map(error, grads, grads64)))
print(json.dumps(result, indent=2))
with open(out, "w") as f:
    json.dump(result, f, indent=2)
EOF
}

step_bench() {
  "$PYTHON" bench.py --device "$device" --configs tetrominoes_nwm tetrominoes_lstm tetrominoes_cnn8 multi_mnist_nwm \
    --no-reference --no-check "${bench_args[@]}" --json "$out/bench.json"
}

step_per_gpu() {
  local n gpu start root device_args=()
  gpu=$("$PYTHON" -c 'import launch; print(*launch.visible_gpus()[:1])')  # one GPU: the images/s one GPU gives
  [[ -z $gpu ]] || export CUDA_VISIBLE_DEVICES=$gpu
  ((!cpu)) || device_args=(--device cpu)
  for n in 1 2 4; do
    root=$out/per_gpu/$n
    start=$(date +%s.%N)
    bash scripts/tetrominoes/lstm.sh --seeds 2 --per-gpu "$n" --python "$PYTHON" -- --data-root "$data" \
      --runs-root "$root" "${sizes[@]}" "${recurrent[@]}" --epochs 2 --min-epochs 0 --compile off --no-progress \
      "${device_args[@]}"
    json_set "$out/per_gpu.json" "wall_seconds_$n=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { print e - s }')"
  done
  "$PYTHON" - "$out/per_gpu" "$out/per_gpu.json" <<'EOF'
import csv, json, sys
from pathlib import Path
root, out = Path(sys.argv[1]), Path(sys.argv[2])
record = json.loads(out.read_text())
for n in (1, 2, 4):
    rates = []
    for run in sorted((root / str(n)).glob("tetrominoes/*/config.json")):
        config = json.loads(run.read_text())
        with open(run.parent / "metrics.csv") as f:
            last = list(csv.DictReader(f))[-1]
        images = config["train_size"] // config["batch_size"] * config["batch_size"]
        rates.append(images / float(last["seconds"]))
    record[str(n)] = dict(runs=len(rates), images_per_second_per_run=rates,
                          aggregate_images_per_second=sum(rates) / max(1, -(-len(rates) // n)))
    print(f"--per-gpu {n}: {record[str(n)]['aggregate_images_per_second']:.0f} images/s over the runs at once")
out.write_text(json.dumps(record, indent=2))
EOF
}

if [[ -n $step_name ]]; then  # one step, in its own process under its timeout
  "step_$step_name"
  exit
fi

if ((dry_run)); then
  echo "gpu_check on $device: $((${#STEPS[@]})) steps (timeout in seconds), then $out.tar.gz"
  total=0
  for entry in "${STEPS[@]}"; do
    read -r name seconds what <<<"$entry"
    skip=""
    [[ $cpu == 0 || $CUDA_ONLY != *" $name "* ]] || skip=" (skipped on the CPU: needs CUDA)"
    printf '  %-11s %4ss  %s%s\n' "$name" "$((seconds * slower))" "$what" "$skip"
    total=$((total + seconds * slower))
  done
  echo "  timeouts add up to $total s ($((total / 60)) min $((total % 60)) s)"
  exit 0
fi

mkdir -p "$out"
out=$(cd "$out" && pwd) data=$out/data
echo "gpu_check on $device, $("$PYTHON" -c 'import torch; print("torch", torch.__version__)'); logs in $out/"
status=0
for entry in "${STEPS[@]}"; do
  read -r name seconds what <<<"$entry"
  if ((cpu)) && [[ $CUDA_ONLY == *" $name "* ]]; then
    result="skipped: needs CUDA" took=0
  else
    begin=$(date +%s.%N)
    code=0
    seconds=$((seconds * slower))
    timeout --kill-after=10 "$seconds" bash "$SCRIPT" --step "$name" --device "$device" --out "$out" \
      ${mnist_dir:+--mnist-from-dir "$mnist_dir"} --python "$PYTHON" >"$out/$name.log" 2>&1 || code=$?
    took=$(awk -v b="$begin" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - b }')
    case $code in
      0) result=ok ;;
      124 | 137) result="timed out" status=1 ;;
      *) result="failed (exit status $code)" status=1 ;;
    esac
  fi
  printf '%-11s %-28s %6ss of %ss  %s\n' "$name" "$result" "$took" "$seconds" "$what"
  json_set "$out/steps.json" "$name={\"status\": \"$result\", \"seconds\": $took, \"timeout\": $seconds}"
done

"$PYTHON" - "$out" "$device" <<'EOF'
import json, platform, subprocess, sys
from pathlib import Path
import torch
out, device = Path(sys.argv[1]), sys.argv[2]
summary = dict(device=device, torch=torch.__version__, python=platform.python_version(),
               gpu=torch.cuda.get_device_name(device) if torch.cuda.is_available() and device != "cpu" else None,
               git=subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
               steps=json.loads((out / "steps.json").read_text()))
for path in sorted(out.glob("*.json")):
    if path.name not in ("steps.json", "summary.json"):
        summary[path.stem] = json.loads(path.read_text())
(out / "summary.json").write_text(json.dumps(summary, indent=2))
EOF
tar czf "$out.tar.gz" -C "$(dirname "$out")" --exclude=data --exclude='*.pt' "$(basename "$out")"
echo "archive: $out.tar.gz (summary.json: every step and its numbers)"
exit "$status"
