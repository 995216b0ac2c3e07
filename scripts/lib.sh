#!/usr/bin/env bash
# Options of every experiment script (scripts/<dataset>/<model>.sh and scripts/run_all.sh):
#
#   --dry-run          print the train.py commands, one per line, and run nothing
#   --seeds N          seeds 0..N-1 instead of the paper's count
#   --python PATH      interpreter (default: the repo's .venv/bin/python if present, else python3)
#   --keep-going       go on after a failed run, list the failures at the end and exit
#                      non-zero if any (default: stop at the first failure)
#   --per-gpu N        run N trainings at once on each GPU (default 1): these models leave
#                      most of a large GPU idle. Here: N runs at a time on every GPU of
#                      $CUDA_VISIBLE_DEVICES (else every GPU nvidia-smi lists; set but empty:
#                      none), fewer where a GPU's free memory holds fewer (see --gpu-gb); with
#                      no GPU, N at a time on the CPU. Each run has its share of the CPU cores
#                      and its output in <runs root>/logs/; runs whose CUDA graph could not be
#                      captured are listed at the end. With --slurm: N runs packed into each
#                      array task, sharing its GPU (memory not checked).
#   --gpu-gb G         GPU memory one run takes, in GB, for --per-gpu (default: 28 for the
#                      Multi-MNIST NWM and LSTM runs, else 8)
#   --slurm            submit one SLURM job array, one task per run (or per N runs), instead
#                      of running here. Writes <runs root>/slurm/<family>_<time>.commands (one
#                      command a line) and .sbatch (task i runs its lines of the file); logs go
#                      to <runs root>/slurm/logs/. With --dry-run the files are written and
#                      shown but not submitted.
#     --partition P    --time HH:MM:SS   --gpus N (default 1; 0: none)   --cpus N   --mem M
#     --account A      --max-parallel N (at most N tasks of the array at once)
#   -h, --help         this text
#   -- ARGS...         extra train.py flags for every run, e.g. -- --epochs 50 --train-size 2000
#
# The runs go one after another (or --per-gpu at a time, or as array tasks), always from the
# repository root, so
# relative paths (--python, ARGS, $WAVES_DATA_ROOT, $WAVES_RUNS_ROOT) are taken from there.
# The runs root is --runs-root in ARGS, else $WAVES_RUNS_ROOT, else ./runs. Running a
# script again is safe: train.py skips finished runs and resumes killed ones.

# Sourced by the scripts, never run. A family script declares its configurations and
# hands them to run_grid, which adds the seeds and runs, prints or submits the commands:
#
#     parse_options "$@"
#     for depth in 2 4 8; do add_config --dataset mnist --model cnn --depth "$depth"; done
#     run_grid 10    # the paper's number of seeds

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LIB=$REPO/scripts/lib.sh
SCRIPT=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")  # the script being run
SYNOPSIS="$0 [options] [-- train.py ARGS...]"
# train.py's ./data and ./runs defaults are relative to the current directory: working
# from the repository root puts every run of every script in the same place.
cd "$REPO"

DRY_RUN=0 KEEP_GOING=0 SLURM=0 SEEDS="" PYTHON="" PER_GPU=1 GPU_GB=""
PARTITION="" TIME_LIMIT="" GPUS=1 CPUS="" MEM="" ACCOUNT="" MAX_PARALLEL=""
EXTRA_ARGS=() CONFIGS=()

# header FILE: the first comment block of FILE without the '#'s (the --help text).
header() { awk 'NR == 1 && /^#!/ { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$1"; }

show_help() { echo "usage: $SYNOPSIS"; echo; header "$SCRIPT"; echo; header "$LIB"; }

usage_error() {  # exit status 2, as argparse
  echo "usage: $SYNOPSIS" >&2
  echo "$0: error: $1 (see --help)" >&2
  exit 2
}

# set_value VAR OPTION [VALUE ...]: VAR=VALUE, or a usage error when the value is missing.
set_value() {
  [[ $# -ge 3 && $3 != -* ]] || usage_error "$2 needs a value"
  printf -v "$1" %s "$3"
}

# set_count VAR OPTION [VALUE ...]: the same for a whole number.
set_count() {
  set_value "$@"
  [[ ${!1} =~ ^[0-9]+$ ]] || usage_error "$2 needs a whole number, not '${!1}'"
}

# The interpreter the commands name: --python, else the repo's virtual environment, else python3.
resolve_python() {
  [[ -n $PYTHON ]] && return
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
}

parse_options() {
  local slurm_only=""  # the last option given that means something only with --slurm
  while (($#)); do
    case $1 in
      --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}"; continue ;;  # --opt=value -> --opt value
      -h | --help) show_help; exit 0 ;;
      --dry-run) DRY_RUN=1 ;;
      --keep-going) KEEP_GOING=1 ;;
      --slurm) SLURM=1 ;;
      --seeds) set_count SEEDS "$@"; shift ;;
      --per-gpu) set_count PER_GPU "$@"; shift ;;
      --gpu-gb) set_count GPU_GB "$@"; shift ;;
      --python) set_value PYTHON "$@"; shift ;;
      --partition) set_value PARTITION "$@"; slurm_only=$1; shift ;;
      --time) set_value TIME_LIMIT "$@"; slurm_only=$1; shift ;;
      --gpus) set_count GPUS "$@"; slurm_only=$1; shift ;;
      --cpus) set_count CPUS "$@"; slurm_only=$1; shift ;;
      --mem) set_value MEM "$@"; slurm_only=$1; shift ;;
      --account) set_value ACCOUNT "$@"; slurm_only=$1; shift ;;
      --max-parallel) set_count MAX_PARALLEL "$@"; slurm_only=$1; shift ;;
      --) shift; EXTRA_ARGS=("$@"); break ;;
      *) usage_error "unknown option '$1'; train.py flags go after --" ;;
    esac
    shift
  done
  # Without --slurm these would silently start the whole grid on this machine.
  [[ -z $slurm_only ]] || ((SLURM)) || usage_error "$slurm_only needs --slurm"
  [[ -z $SEEDS ]] || ((SEEDS > 0)) || usage_error "--seeds must be at least 1"
  [[ -z $MAX_PARALLEL ]] || ((MAX_PARALLEL > 0)) || usage_error "--max-parallel must be at least 1"
  ((PER_GPU > 0)) || usage_error "--per-gpu must be at least 1"
  resolve_python
}

# quote ARGS...: the arguments as shell words, each after a space (nothing for none).
quote() {
  local arg
  for arg in "$@"; do printf ' %q' "$arg"; done
}

# extra_value FLAG: the value of FLAG among the extra train.py ARGS (the last one wins,
# as in argparse), or nothing.
extra_value() {
  local i value=""
  for ((i = 0; i < ${#EXTRA_ARGS[@]}; i++)); do
    case ${EXTRA_ARGS[i]} in
      "$1") value=${EXTRA_ARGS[i + 1]-} ;;
      "$1"=*) value=${EXTRA_ARGS[i]#*=} ;;
    esac
  done
  printf %s "$value"
}

# runs_root: where the runs go: --runs-root among the extra ARGS, else $WAVES_RUNS_ROOT, else runs.
runs_root() {
  local root
  root=$(extra_value --runs-root)
  printf %s "${root:-${WAVES_RUNS_ROOT:-runs}}"
}

# family: the name of the script's family, e.g. tetrominoes_nwm.
family() { printf %s "$(basename "$(dirname "$SCRIPT")")_$(basename "$SCRIPT" .sh)"; }

# add_config ARGS...: one configuration of the family (train.py flags, without --seed).
add_config() { CONFIGS+=("$(quote "$@")"); }

# run_grid PAPER_SEEDS: every configuration x seeds 0..PAPER_SEEDS-1 (or --seeds), run
# here, printed (--dry-run) or submitted (--slurm).
run_grid() {
  local seed config commands=()
  # Seeds outermost: a grid stopped halfway has every configuration at its first seeds.
  for ((seed = 0; seed < ${SEEDS:-$1}; seed++)); do
    for config in "${CONFIGS[@]}"; do
      commands+=("$(printf %q "$PYTHON") train.py$config --seed $seed$(quote "${EXTRA_ARGS[@]}")")
    done
  done
  if ((SLURM)); then
    submit_array "${commands[@]}"
  elif ((DRY_RUN)); then
    printf '%s\n' "${commands[@]}"
  elif ((PER_GPU > 1)) || (($(visible_gpus | wc -l) > 1)); then
    run_parallel "${commands[@]}"
  else
    run_locally "${commands[@]}"
  fi
}

# visible_gpus: the GPUs the runs may use, one id a line: $CUDA_VISIBLE_DEVICES if set (empty:
# none, as CUDA reads it), else the GPUs nvidia-smi lists, else none.
visible_gpus() {
  if [[ -n ${CUDA_VISIBLE_DEVICES+set} ]]; then
    [[ -z $CUDA_VISIBLE_DEVICES ]] || tr ',' '\n' <<<"$CUDA_VISIBLE_DEVICES"
  elif command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null || true
  fi
}

# run_gpu_gb COMMANDS...: the GPU memory, in GB, the largest of the runs takes: --gpu-gb, else 28
# when one trains a recurrent model on Multi-MNIST (16 channels of 128x128 at every step), else 8.
run_gpu_gb() {
  local cmd
  if [[ -n $GPU_GB ]]; then echo "$GPU_GB"; return; fi
  for cmd in "$@"; do
    if [[ $cmd =~ --dataset[=\ ]multi_mnist && ! $cmd =~ --model[=\ ](unet|cnn) ]]; then echo 28; return; fi
  done
  echo 8
}

# gpu_slots GB GPUS...: the GPU of every slot, one a line, round robin: PER_GPU on each GPU, fewer
# where its free memory (nvidia-smi) holds fewer runs of GB each; an error if one holds none.
gpu_slots() {
  local gb=$1 gpu free fits round
  shift
  declare -A per
  for gpu in "$@"; do
    per[$gpu]=$PER_GPU
    free=$(nvidia-smi --query-gpu=memory.free --format=csv,noheader,nounits -i "$gpu" 2>/dev/null) || free=""
    if [[ ! $free =~ ^[0-9]+$ ]]; then
      echo "GPU $gpu: free memory unknown (no answer from nvidia-smi): not checked" >&2
      continue
    fi
    fits=$((free / (gb * 1024)))
    if ((fits == 0)); then
      echo "$0: error: GPU $gpu has $((free / 1024)) GB free and a run takes about $gb GB: free it, leave it" \
        "out of CUDA_VISIBLE_DEVICES, or set --gpu-gb" >&2
      return 1
    fi
    if ((fits < PER_GPU)); then
      echo "GPU $gpu: $((free / 1024)) GB free, about $gb GB a run (--gpu-gb): $fits at a time instead of $PER_GPU" >&2
      per[$gpu]=$fits
    fi
  done
  for ((round = 0; round < PER_GPU; round++)); do
    for gpu in "$@"; do ((round >= per[$gpu])) || echo "$gpu"; done
  done
}

# slot_cores K SLOTS: the CPU cores of slot K when SLOTS runs share this process's cores (its
# affinity mask), as a taskset list, e.g. "2,3"; nothing where cores cannot be pinned.
slot_cores() {
  command -v taskset >/dev/null || return 0
  local mask range i per cores=() slot=()
  mask=$(taskset -cp $$ 2>/dev/null) || return 0
  IFS=, read -ra mask <<<"${mask##*: }"  # e.g. 0-3,8
  for range in "${mask[@]}"; do
    for ((i = ${range%-*}; i <= ${range#*-}; i++)); do cores+=("$i"); done
  done
  per=$((${#cores[@]} / $2))
  ((per > 0)) || per=1
  for ((i = $1 * per; i < ($1 + 1) * per; i++)); do slot+=("${cores[i % ${#cores[@]}]}"); done
  (IFS=,; echo "${slot[*]}")
}

# run_parallel COMMANDS...: PER_GPU runs at a time on each visible GPU (fewer where its memory
# holds fewer; on the CPU when there is none), each run's output in <runs root>/logs/<family>_<i>.log.
# Each slot is pinned to its own share of the cores, so the runs' threads (train.py uses the cores
# it may run on) do not fight over them. Without --keep-going no new run starts after a failure;
# the ones running finish. Runs that fell back to eager steps (no CUDA graph) are listed at the end.
run_parallel() {
  local gpus=() slot_gpu=() pids=() slot_run=() failed=() logs=() eager=() cmds=("$@") n=$# next=0 k i gpu log
  local status log_dir cores
  mapfile -t gpus < <(visible_gpus)
  if ((${#gpus[@]})); then
    mapfile -t slot_gpu < <(gpu_slots "$(run_gpu_gb "$@")" "${gpus[@]}") && ((${#slot_gpu[@]})) || exit 1
  else
    for ((k = 0; k < PER_GPU; k++)); do slot_gpu+=(""); done
  fi
  local slots=${#slot_gpu[@]}
  log_dir=$(runs_root)/logs
  mkdir -p "$log_dir"
  echo "$n runs, $PER_GPU at a time on each of: ${gpus[*]:-the CPU}; logs in $log_dir/"
  while ((next < n || ${#pids[@]})); do
    for ((k = 0; k < slots && next < n; k++)); do
      [[ -z ${pids[k]-} ]] || continue
      gpu=${slot_gpu[k]} log=$log_dir/$(family)_$((next + 1)).log cores=""
      logs+=("$log")
      ((slots == 1)) || cores=$(slot_cores "$k" "$slots")
      echo "[$((next + 1))/$n] started${gpu:+ on GPU $gpu}${cores:+ on cores $cores}: ${cmds[next]}"
      (
        [[ -z $gpu ]] || export CUDA_VISIBLE_DEVICES=$gpu
        [[ -z $cores ]] || taskset -cp "$cores" "$BASHPID" >/dev/null  # inherited by the run
        eval "${cmds[next]}"
      ) >"$log" 2>&1 &
      pids[k]=$! slot_run[k]=$next next=$((next + 1))
    done
    sleep 0.2
    for k in "${!pids[@]}"; do
      kill -0 "${pids[k]}" 2>/dev/null && continue  # still running
      status=0
      wait "${pids[k]}" || status=$?
      i=${slot_run[k]}
      unset 'pids[k]'
      if ((status)); then
        echo "$0: error: run $((i + 1))/$n failed (exit status $status): ${cmds[i]} (log: $log_dir/$(family)_$((i + 1)).log)" >&2
        failed+=("${cmds[i]}")
        ((KEEP_GOING)) || next=$n  # start nothing more
      else
        echo "[$((i + 1))/$n] done"
      fi
    done
  done
  mapfile -t eager < <(grep -l "CUDA graph capture failed" "${logs[@]}" 2>/dev/null)
  if ((${#eager[@]})); then
    echo "${#eager[@]} of $n runs trained with eager steps, their CUDA graph capture failed (why: the warning in" \
      "each log, and cuda_graph in the run's config.json):"
    printf '  %s\n' "${eager[@]}"
  fi
  finish "$n" "${failed[@]}"
}

# finish N FAILED...: list the failed commands and exit 1, or say that all N runs are done.
finish() {
  local n=$1
  shift
  if (($#)); then
    echo "$0: error: $# of $n runs failed:" >&2
    printf '  %s\n' "$@" >&2
    exit 1
  fi
  echo "all $n runs done"
}

run_locally() {
  local n=$# i=0 cmd status failed=()
  for cmd in "$@"; do
    i=$((i + 1))
    echo "[$i/$n] $cmd"
    status=0
    eval "$cmd" || status=$?
    if ((status)); then
      ((KEEP_GOING)) || { echo "$0: error: run $i/$n failed (exit status $status): $cmd" >&2; exit "$status"; }
      failed+=("$cmd")
    fi
  done
  finish "$n" "${failed[@]}"
}

# sbatch_option NAME VALUE: an #SBATCH line, only when VALUE is set.
sbatch_option() { [[ -z $2 ]] || echo "#SBATCH --$1=$2"; }

# submit_array COMMANDS...: write the commands and a job array script whose tasks run
# PER_GPU of them each, then submit it.
submit_array() {
  local n=$# tasks=$((($# + PER_GPU - 1) / PER_GPU)) family runs_root slurm_dir stem
  family=$(family)
  runs_root=$(runs_root)
  mkdir -p "$runs_root/slurm/logs"  # SLURM does not create the log folder itself
  slurm_dir=$(cd "$runs_root/slurm" && pwd)
  # The process id keeps two submissions in one second apart: tasks read their file late.
  stem=$slurm_dir/${family}_$(date +%Y%m%d-%H%M%S)_$$

  printf '%s\n' "$@" >"$stem.commands"
  {
    echo "#!/usr/bin/env bash"
    sbatch_option job-name "$family"
    sbatch_option array "0-$((tasks - 1))${MAX_PARALLEL:+%$MAX_PARALLEL}"
    sbatch_option output "$slurm_dir/logs/%A_%a.out"
    sbatch_option partition "$PARTITION"
    sbatch_option time "$TIME_LIMIT"
    ((GPUS == 0)) || sbatch_option gres "gpu:$GPUS"
    sbatch_option cpus-per-task "$CPUS"
    sbatch_option mem "$MEM"
    sbatch_option account "$ACCOUNT"
    cat <<EOF
# Task i runs lines $PER_GPU i + 1 .. $PER_GPU (i + 1) of the commands file, at once, from the
# repository root; it fails if one of them fails.
set -euo pipefail
cd $(printf %q "$REPO")
first=\$((SLURM_ARRAY_TASK_ID * $PER_GPU + 1))
pids=()
while IFS= read -r cmd; do
  echo "\$cmd"
  (eval "\$cmd") &
  pids+=(\$!)
done < <(sed -n "\${first},\$((first + $PER_GPU - 1))p" $(printf %q "$stem.commands"))
status=0
for pid in "\${pids[@]}"; do wait "\$pid" || status=\$?; done
exit "\$status"
EOF
  } >"$stem.sbatch"

  if ((DRY_RUN)); then
    echo "wrote $stem.commands ($n runs, $tasks array tasks) and $stem.sbatch; not submitted (--dry-run):"
    echo
    cat "$stem.sbatch"
  elif command -v sbatch >/dev/null; then
    sbatch "$stem.sbatch"
  else
    echo "$0: error: sbatch not found on PATH. Wrote $stem.commands ($n runs) and $stem.sbatch;" \
      "submit them where SLURM is available with: sbatch $stem.sbatch" >&2
    exit 1
  fi
}
