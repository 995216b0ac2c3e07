#!/usr/bin/env bash
# The paper's whole experiment grid: creates the datasets, runs every family script below
# in order with the same options (those of every family script, see its --help), then writes
# the score table (produce_scores.py, with the --runs-root and --data-root of ARGS). With --slurm
# every family becomes one job array, submitted after the datasets are made here; score the runs
# once the jobs are done.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

FAMILIES=(
  tetrominoes/nwm tetrominoes/lstm tetrominoes/cnn
  mnist/nwm mnist/lstm mnist/cnn
  multi_mnist/nwm multi_mnist/unet
  polygons/nwm
)

# The options, checked by launch.py before any work; it sets dry_run, slurm, keep_going, python,
# runs_root and data_root.
settings=$("$LAUNCHER" launch.py --script "$SCRIPT" --grid "${FAMILIES[0]}" --shell-settings "$@") || exit $?
[[ $settings == *dry_run=* ]] || { echo "$settings"; exit 0; }  # --help
eval "$settings"

data_args=(--python "$python")
((dry_run)) && data_args+=(--dry-run)
[[ -z $data_root ]] || data_args+=(--data-root "$data_root")
"$BASH" scripts/create_data.sh "${data_args[@]}"

failed=()
for family in "${FAMILIES[@]}"; do
  status=0
  "$BASH" "scripts/$family.sh" "$@" || status=$?  # the family scripts read the same options
  if ((status)); then
    ((keep_going)) || exit "$status"
    failed+=("$family")
  fi
done

score=("$python" produce_scores.py)
[[ -z $runs_root ]] || score+=(--runs-root "$runs_root")
[[ -z $data_root ]] || score+=(--data-root "$data_root")
if ((slurm)); then
  echo "once the jobs are done, score the runs from $REPO with: ${score[*]}"
else
  echo "${score[*]}"
  ((dry_run)) || "${score[@]}"  # scores whatever finished, failed families or not
fi

if ((${#failed[@]})); then
  echo "$0: error: runs failed in: ${failed[*]}" >&2
  exit 1
fi
