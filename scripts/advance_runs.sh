#!/usr/bin/env bash
# Advances runs by a time slice, for machines held for a limited time (a GPU lent for half an
# hour, a pre-emptible queue): the runs live in a runs root that travels with you (by default
# results/runs, committed), and each slice moves every run forward and packs the run
# directories to bring back. See docs/reproducing.md, "Advancing runs in time slices".
#
#   scripts/advance_runs.sh COMMANDS_FILE --minutes 9 --per-gpu 4 --mnist-from-dir DIR --archive OUT/runs
#
# COMMANDS_FILE holds train.py commands, one a line (e.g. what a family script prints with
# --dry-run). In order, this script
#   1. creates the datasets the commands train on, under --data-root, MNIST and Multi-MNIST
#      from --mnist-from-dir (the four files, any form), and checks every array against its
#      dataset.json and the paper's SHA-256 (data_scripts/verify_datasets.py): it stops
#      before any training if one differs;
#   2. runs the commands, --per-gpu at a time on each GPU (on the CPU where there is none,
#      each of the N at once pinned to its share of the cores), each with --runs-root,
#      --data-root and --stop-after-minutes M added: a run pauses after the epoch in which it
#      passes M minutes, finishes (and is tested) when its budget is spent, and continues
#      where it paused the next time (with --queue: what is left of M when it starts);
#   3. packs the directories of the runs it touched, and the runs' logs (<runs root>/logs/), into
#      ARCHIVE.tar.gz.part-aa, -ab, ... of at most --part-mb MB each; unpack them with
#      cat ARCHIVE.tar.gz.part-* | tar xzf - -C RUNS_ROOT
#
#   --minutes M          the slice: each run pauses after the epoch that passes M minutes (required)
#   --queue              the commands share the slice instead (a CPU machine held for a few hours):
#                        they run --per-gpu at a time in order, each starting with what is left of
#                        the M minutes, and none starts with less than --min-start minutes left.
#                        A finished run is skipped at once, so the same command, run again each
#                        session, always advances the first unfinished runs of the file.
#   --min-start MIN      with --queue, the least time worth starting a run for (default 5)
#   --per-gpu N          runs at once on each GPU (default 1; with no GPU, N at once on the CPU;
#                        fewer where a GPU's free memory holds fewer, see --gpu-gb)
#   --gpu-gb G           GPU memory one run takes, in GB (default: 28 for Multi-MNIST NWM and LSTM runs, else 8)
#   --runs-root DIR      where the runs live and continue (default: results/runs)
#   --data-root DIR      where the datasets are made (default: $WAVES_DATA_ROOT, else ./data)
#   --mnist-from-dir DIR the four MNIST files, for MNIST and Multi-MNIST
#   --archive PREFIX     where the packed runs go (default: no archive)
#   --part-mb MB         largest archive part (default 15)
#   --python PATH        interpreter (default: the repo's .venv/bin/python if present, else python3)
#   -h, --help           this text
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SYNOPSIS="$0 COMMANDS_FILE --minutes M [options]"

commands_file="" minutes="" runs_dir="results/runs" data_root="${WAVES_DATA_ROOT:-data}" mnist_dir=""
archive="" part_mb=15 KEEP_GOING=1 queue=0 min_start=5
while (($#)); do
  case $1 in
    --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}"; continue ;;
    -h | --help) echo "usage: $SYNOPSIS"; echo; header "$SCRIPT"; exit 0 ;;
    --minutes) set_value minutes "$@"; shift ;;
    --queue) queue=1 ;;
    --min-start) set_value min_start "$@"; shift ;;
    --per-gpu) set_count PER_GPU "$@"; shift ;;
    --gpu-gb) set_count GPU_GB "$@"; shift ;;
    --runs-root) set_value runs_dir "$@"; shift ;;
    --data-root) set_value data_root "$@"; shift ;;
    --mnist-from-dir) set_value mnist_dir "$@"; shift ;;
    --archive) set_value archive "$@"; shift ;;
    --part-mb) set_count part_mb "$@"; shift ;;
    --python) set_value PYTHON "$@"; shift ;;
    -*) usage_error "unknown option '$1'" ;;
    *) [[ -z $commands_file ]] || usage_error "one COMMANDS_FILE only"; commands_file=$1 ;;
  esac
  shift
done
resolve_python
[[ -n $commands_file ]] || usage_error "COMMANDS_FILE is missing"
[[ -f $commands_file ]] || usage_error "no file $commands_file"
[[ $minutes =~ ^[0-9]*\.?[0-9]+([eE]-?[0-9]+)?$ ]] || usage_error "--minutes needs a positive number of minutes"
[[ $min_start =~ ^[0-9]*\.?[0-9]+$ ]] || usage_error "--min-start needs a number of minutes"
((PER_GPU > 0 && part_mb > 0)) || usage_error "--per-gpu and --part-mb must be at least 1"
EXTRA_ARGS=(--runs-root "$runs_dir")  # where run_parallel puts its logs

mapfile -t commands < <(grep -v '^[[:space:]]*\(#\|$\)' "$commands_file")
((${#commands[@]})) || usage_error "$commands_file holds no command"

# 1. the data: made where missing, then all checked, before any training
datasets=$(printf '%s\n' "${commands[@]}" | grep -o -- '--dataset[ =][a-z_]*' | sed 's/--dataset[ =]//' | sort -u)
root=(--data-root "$data_root")
step() { echo "$PYTHON $*"; "$PYTHON" "$@"; }
for dataset in $datasets; do
  [[ ! -f $data_root/$dataset/dataset.json ]] || continue  # made before: checked below
  case $dataset in
    tetrominoes) step data_scripts/create_tetrominoes.py "${root[@]}" ;;
    polygons) step data_scripts/create_polygons.py "${root[@]}" ;;
    mnist | multi_mnist)
      step data_scripts/download_mnist.py "${root[@]}" ${mnist_dir:+--from-dir "$mnist_dir"}
      [[ $dataset == mnist ]] || step data_scripts/create_multi_mnist.py "${root[@]}" ;;
    *) usage_error "unknown dataset '$dataset' in $commands_file" ;;
  esac
done
# shellcheck disable=SC2086
step data_scripts/verify_datasets.py $datasets "${root[@]}" ||
  { echo "$0: error: the data differs from what it should be: nothing was trained" >&2; exit 1; }

# 2. one slice of every run
mkdir -p "$runs_dir"
marker=$(mktemp)
slice_end=$(awk -v now="$(date +%s)" -v m="$minutes" 'BEGIN { printf "%d", now + 60 * m }')
# queued CMD...: CMD with --stop-after-minutes set to what is left of the slice, or a note
# that the slice is spent (evaluated when the command's turn comes).
queued() {
  local left=$((slice_end - $(date +%s)))
  if awk -v l="$left" -v m="$min_start" 'BEGIN { exit !(l < 60 * m) }'; then
    echo "not started, under $min_start minutes of the slice left: $*"
    return 0
  fi
  "$@" --stop-after-minutes "$(awk -v l="$left" 'BEGIN { printf "%.1f", l / 60 }')"
}
slice=()
for cmd in "${commands[@]}"; do
  if ((queue)); then
    slice+=("queued $cmd$(quote --runs-root "$runs_dir" --data-root "$data_root" --no-progress)")
  else
    slice+=("$cmd$(quote --runs-root "$runs_dir" --data-root "$data_root" --stop-after-minutes "$minutes" --no-progress)")
  fi
done
status=0
(run_parallel "${slice[@]}") || status=$?

# 3. the runs it touched, packed
mapfile -t touched < <(cd "$runs_dir" && find . -newer "$marker" -type f -printf '%h\n' | sort -u |
  while read -r dir; do [[ -f $dir/config.json ]] && echo "${dir#./}"; done)
rm -f "$marker"
for dir in "${touched[@]}"; do
  "$PYTHON" - "$runs_dir/$dir" <<'EOF'
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
config = json.loads((run / "config.json").read_text())
epochs = sum(1 for _ in open(run / "metrics.csv")) - 1 if (run / "metrics.csv").is_file() else 0
state = "finished" if (run / "test_metrics.json").is_file() else "in progress"
print(f"{run}: {epochs}/{config['epochs']} epochs, {state}")
EOF
done
if [[ -n $archive && ${#touched[@]} -gt 0 ]]; then
  mkdir -p "$(dirname "$archive")"
  rm -f "$archive".tar.gz.part-*
  logs=()
  [[ ! -d $runs_dir/logs ]] || logs=(logs)  # what each run printed, warnings included
  tar czf - -C "$runs_dir" "${touched[@]}" "${logs[@]}" | split -b "${part_mb}m" - "$archive.tar.gz.part-"
  ls -l "$archive".tar.gz.part-*
  echo "unpack with: cat $archive.tar.gz.part-* | tar xzf - -C $runs_dir"
fi
exit "$status"
