#!/usr/bin/env bash
# Sourced by the scripts, never run: from the repository root (train.py's ./data and ./runs are
# relative to it), `launch ARGS` replaces the script with launch.py (a stop signal reaches it),
# naming the script for its logs and --help, and the caller's folder, from which the paths given
# are read (absolute CALLER/PATH). PYTHON: the repository's .venv if any, else python3.
set -euo pipefail
unset CDPATH  # else cd prints the folder it found there, into $(cd ... && pwd)
script=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
caller=$PWD
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=python3
[[ ! -x .venv/bin/python ]] || PYTHON=.venv/bin/python
from_caller() { [[ $1 == /* ]] && echo "$1" || echo "$caller/$1"; }
launch() { exec "$PYTHON" launch.py --script "$script" --caller-dir "$caller" "$@"; }
