#!/usr/bin/env bash
# Sourced by the scripts, never run: it moves to the repository root (train.py's ./data and ./runs
# defaults are relative to the current directory, so every script's runs land in one place) and
# holds what gpu_check.sh, which reads its own options, needs. A family script declares its
# configurations and hands them, with its options, to launch.py, which runs, prints or submits them:
#
#     configs=()
#     for depth in 2 4 8; do configs+=(--config="--dataset mnist --model cnn --depth $depth"); done
#     launch --paper-seeds 10 "${configs[@]}" "$@"

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SCRIPT=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")  # the script being run
cd "$REPO"
PYTHON=""

# header FILE: the first comment block of FILE without the '#'s (the --help text).
header() { awk 'NR == 1 && /^#!/ { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$1"; }

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

# The interpreter of launch.py, and of gpu_check.sh unless --python: the repo's virtual environment, else python3.
LAUNCHER=python3
[[ ! -x .venv/bin/python ]] || LAUNCHER=.venv/bin/python
resolve_python() { [[ -n $PYTHON ]] || PYTHON=$LAUNCHER; }

# launch ARGS...: launch.py, in this process (a stop signal reaches it), with the script's name and help.
launch() { exec "$LAUNCHER" launch.py --script "$SCRIPT" "$@"; }
