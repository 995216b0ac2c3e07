#!/usr/bin/env bash
# The paper's whole experiment grid: creates the datasets, runs every family script below
# in order with the same options, then writes the score table (produce_scores.py, with the
# --runs-root and --data-root of ARGS). With --slurm every family becomes one job array,
# submitted after the datasets are made here; score the runs once the jobs are done.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
parse_options "$@"

FAMILIES=(
  tetrominoes/nwm tetrominoes/lstm tetrominoes/cnn
  mnist/nwm mnist/lstm mnist/cnn
  multi_mnist/nwm multi_mnist/unet
  polygons/nwm
)

data_args=(--python "$PYTHON")
if ((DRY_RUN)); then data_args+=(--dry-run); fi
data_root=$(extra_value --data-root)
[[ -z $data_root ]] || data_args+=(--data-root "$data_root")
"$BASH" scripts/create_data.sh "${data_args[@]}"

failed=()
for family in "${FAMILIES[@]}"; do
  status=0
  "$BASH" "scripts/$family.sh" "$@" || status=$?  # the family scripts parse the same options
  if ((status)); then
    ((KEEP_GOING)) || exit "$status"
    failed+=("$family")
  fi
done

score_args=()
for flag in --runs-root --data-root; do
  value=$(extra_value "$flag")
  [[ -z $value ]] || score_args+=("$flag" "$value")
done
score="$(printf %q "$PYTHON") produce_scores.py$(quote "${score_args[@]}")"
if ((SLURM)); then
  echo "once the jobs are done, score the runs from $REPO with: $score"
elif ((DRY_RUN)); then
  echo "$score"
else
  echo "$score"
  eval "$score"  # scores whatever finished, failed families or not
fi

if ((${#failed[@]})); then
  echo "$0: error: runs failed in: ${failed[*]}" >&2
  exit 1
fi
