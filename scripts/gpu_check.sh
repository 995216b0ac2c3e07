#!/usr/bin/env bash
# Checks the GPU path in under 9 minutes on a machine with a GPU, this repository, its requirements and
# the MNIST files (--mnist-from-dir) or the internet. Each step runs under its own timeout and writes
# <step>.log into OUT (default ${TMPDIR:-/tmp}/gpu_check_<time>, out of the runs' way), packed into OUT.tar.gz without data
# and checkpoints: summary.txt (each step's status and seconds), the graph_* runs (config.json's
# cuda_graph, seconds per epoch in metrics.csv), bench.json and per_gpu.json.
#
#   bash scripts/gpu_check.sh [--mnist-from-dir DIR] [--out OUT] [--python PATH]   # on the GPU machine
#   bash scripts/gpu_check.sh --dry-run          # every step with its timeout
#   bash scripts/gpu_check.sh --device cpu       # the steps a CPU can run, tiny (cuda:N: another GPU)
#
# With --device cuda:N every step sees GPU N alone (entry N, from 0, of CUDA_VISIBLE_DEVICES where it is set).
source "$(dirname "$0")/lib.sh"

# name, timeout in seconds, what it does; the timeouts add up to 9 minutes
STEPS=(
  "data 40 Tetrominoes and Multi-MNIST, small, made from scratch (MNIST downloaded or --mnist-from-dir)"
  "cuda_tests 60 pytest tests/test_cuda.py (graphed = eager, models on CUDA)"
  "resume 45 pytest tests/test_cuda.py -k killed: runs paused or killed, resumed against them uninterrupted"
  "graph_nwm 60 one epoch of the Multi-MNIST NWM, --cuda-graph auto --compile on"
  "graph_lstm 60 one epoch of the Tetrominoes ConvLSTM, --cuda-graph auto --compile on"
  "graph_unet 60 one epoch of the Multi-MNIST U-Net, --cuda-graph auto --compile on"
  "tf32 25 pytest tests/test_cuda.py -k tf32: a float32 NWM step, TF32 on and off, against float64"
  "bench 90 bench.py eager vs graphed: tetrominoes_nwm, tetrominoes_lstm, tetrominoes_cnn8, multi_mnist_nwm"
  "per_gpu 90 bench.py --per-gpu 1 2 4: a 4-run ConvLSTM grid, aggregate images/s"
)
CUDA_ONLY=" cuda_tests resume tf32 "

need() { [[ $# -ge 2 && $2 != -* ]] || { echo "$0: error: $1 needs a value (see --help)" >&2; exit 2; }; }
device=cuda dry_run=0 out=${TMPDIR:-/tmp}/gpu_check_$(date +%Y%m%d-%H%M%S) mnist_dir="" step=""
while (($#)); do
  case $1 in
    --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}"; continue ;;
    -h | --help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$script"; exit 0 ;;
    --dry-run) dry_run=1 ;;
    --device) need "$@"; device=$2; shift ;;
    --mnist-from-dir) need "$@"; mnist_dir=$(from_caller "$2"); shift ;;
    --out) need "$@"; out=$(from_caller "$2"); shift ;;
    --python) need "$@"; PYTHON=$2; [[ $2 != */* ]] || PYTHON=$(from_caller "$2"); shift ;;  # a name: on PATH
    --step) step=$2; shift ;;  # one step, in its own process under its timeout
    *) echo "$0: error: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[[ $device =~ ^(cpu|cuda(:[0-9]+)?)$ ]] || { echo "$0: error: --device is cuda, cuda:N or cpu" >&2; exit 2; }
command -v "$PYTHON" >/dev/null || {
  echo "$0: error: no interpreter $PYTHON: give --python the path of one (from where you call this)" \
    "or a name on PATH" >&2
  exit 2
}
# cuda:N: GPU N as the only one the steps see, named cuda, since tests/test_cuda.py and bench.py --per-gpu take the
# first visible GPU
shown=$device
if [[ $device == cuda:* ]]; then
  gpu=$((10#${device#cuda:}))
  if [[ -v CUDA_VISIBLE_DEVICES ]]; then  # N counts among the GPUs it shows, as CUDA numbers them
    IFS=, read -ra visible <<<"$CUDA_VISIBLE_DEVICES"
    ((gpu < ${#visible[@]})) || {
      echo "$0: error: --device $device: CUDA_VISIBLE_DEVICES='$CUDA_VISIBLE_DEVICES' shows ${#visible[@]} GPUs," \
        "and cuda:N counts from 0 among them; name one of those, or unset CUDA_VISIBLE_DEVICES" >&2
      exit 2
    }
    gpu=${visible[gpu]}
  fi
  export CUDA_VISIBLE_DEVICES=$gpu
  shown="$device (CUDA_VISIBLE_DEVICES=$gpu, seen as cuda)" device=cuda
fi

# What a GPU does in seconds or, on a CPU, what shows that every step starts, with 4 times the timeouts
# (torch.compile builds C++ there).
if [[ $device == cpu ]]; then
  sizes=(--train-size 16 --val-size 16 --batch-size 8) recurrent=(--T 6 --c-mid 4 --readout-width 8 --readout-depth 1)
  splits=(--train 32 --val 16 --test 16) bench=(--batch-size 1 --steps 1) slower=4
else
  sizes=(--train-size 512 --val-size 128 --batch-size 32) recurrent=()
  splits=(--train 1024 --val 128 --test 128) bench=(--steps 5) slower=1
fi
data=$out/data
train=("$PYTHON" train.py --device "$device" --data-root "$data" --no-progress --min-epochs 0 "${sizes[@]}")

step_data() {
  "$PYTHON" data_scripts/create_tetrominoes.py --data-root "$data" "${splits[@]}"
  "$PYTHON" data_scripts/download_mnist.py --data-root "$data" ${mnist_dir:+--from-dir "$mnist_dir"}
  "$PYTHON" data_scripts/create_multi_mnist.py --data-root "$data" "${splits[@]}"
}
step_cuda_tests() { "$PYTHON" -m pytest -q tests/test_cuda.py -k "not killed and not tf32"; }
step_resume() { "$PYTHON" -m pytest -q tests/test_cuda.py -k killed; }
# --cuda-graph auto captures as `on` does, but a failed capture is recorded in config.json, not fatal
graph() { "${train[@]}" "$@" --epochs 1 --cuda-graph auto --compile on --runs-root "$out/$step"; }
step_graph_nwm() { graph --dataset multi_mnist --model nwm "${recurrent[@]}"; }
step_graph_lstm() { graph --dataset tetrominoes --model lstm "${recurrent[@]}"; }
step_graph_unet() { graph --dataset multi_mnist --model unet; }
step_tf32() { "$PYTHON" -m pytest -q -s tests/test_cuda.py -k tf32; }
step_bench() {
  "$PYTHON" bench.py --device "$device" --configs tetrominoes_nwm tetrominoes_lstm tetrominoes_cnn8 multi_mnist_nwm \
    --no-reference --no-check "${bench[@]}" --json "$out/bench.json"
}
step_per_gpu() {
  "$PYTHON" bench.py --device "$device" --per-gpu 1 2 4 --keep-runs "$out" --json "$out/per_gpu.json" -- \
    --data-root "$data" "${sizes[@]}" "${recurrent[@]}" --epochs 2 --min-epochs 0 --compile off --no-progress
}

if [[ -n $step ]]; then
  "step_$step"
  exit
fi

if ((dry_run)); then
  echo "gpu_check on $shown: ${#STEPS[@]} steps (timeout in seconds), then $out.tar.gz"
else
  mkdir -p "$out"
  out=$(cd "$out" && pwd)
  versions='import torch; print("torch", torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())'
  echo "gpu_check on $shown, commit $(git rev-parse --short HEAD), $("$PYTHON" -c "$versions"); logs in $out/" \
    | tee "$out/summary.txt"
fi
status=0 total=0
for entry in "${STEPS[@]}"; do
  read -r name seconds what <<<"$entry"
  seconds=$((seconds * slower)) begin=$SECONDS code=0 result=ok skip=""
  [[ $device != cpu || $CUDA_ONLY != *" $name "* ]] || skip=" (skipped on the CPU: needs CUDA)"
  [[ -n $skip ]] || total=$((total + seconds))
  if ((dry_run)); then
    printf '  %-11s %4ss  %s%s\n' "$name" "$seconds" "$what" "$skip"
    continue
  elif [[ -n $skip ]]; then
    result="skipped: needs CUDA"
  else
    timeout --kill-after=10 "$seconds" bash "$script" --step "$name" --device "$device" --out "$out" \
      ${mnist_dir:+--mnist-from-dir "$mnist_dir"} --python "$PYTHON" >"$out/$name.log" 2>&1 || code=$?
    case $code in
      0) ;;
      124 | 137) result="timed out" status=1 ;;
      *) result="failed (exit status $code)" status=1 ;;
    esac
  fi
  printf '%-11s %-28s %5ss of %ss  %s\n' "$name" "$result" "$((SECONDS - begin))" "$seconds" "$what" \
    | tee -a "$out/summary.txt"
done
if ((dry_run)); then
  echo "  timeouts add up to $total s ($((total / 60)) min $((total % 60)) s)"
  exit 0
fi
tar czf "$out.tar.gz" -C "$(dirname "$out")" --exclude=data --exclude='*.pt' "$(basename "$out")"
echo "archive: $out.tar.gz (summary.txt: every step)"
exit "$status"
