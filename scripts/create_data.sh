#!/usr/bin/env bash
# Creates the four datasets under the data root (--data-root, else $WAVES_DATA_ROOT, else
# ./data; relative paths are taken from the repository root). Tetrominoes and Polygons are
# generated offline from a seed; MNIST is downloaded once (internet) and Multi-MNIST is made
# from its digits; Tetrominoes, MNIST and Multi-MNIST are the paper's arrays byte for byte,
# which the last command checks. Existing datasets are kept, so running this again is cheap.
#
#   --data-root DIR       where the datasets go
#   --mnist-from-dir DIR  take the four MNIST files from DIR instead of the internet (from any
#                         source, gzip'd or not: their decompressed content is checked)
#   --python PATH         interpreter (default: the repo's .venv/bin/python if present, else python3)
#   --dry-run             print the commands, run nothing
#   -h, --help            this text
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SYNOPSIS="$0 [--data-root DIR] [--mnist-from-dir DIR] [--python PATH] [--dry-run]"

data_root="" mnist_dir=""
while (($#)); do
  case $1 in
    --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}"; continue ;;  # --opt=value -> --opt value
    -h | --help) echo "usage: $SYNOPSIS"; echo; header "$SCRIPT"; exit 0 ;;
    --dry-run) DRY_RUN=1 ;;
    --python) set_value PYTHON "$@"; shift ;;
    --data-root) set_value data_root "$@"; shift ;;
    --mnist-from-dir) set_value mnist_dir "$@"; shift ;;
    *) usage_error "unknown option '$1'" ;;
  esac
  shift
done
resolve_python

# run SCRIPT ARGS...: print the command and, unless --dry-run, run it.
run() {
  local cmd
  cmd="$(printf %q "$PYTHON") $1$(quote "${@:2}")"
  echo "$cmd"
  ((DRY_RUN)) || eval "$cmd"
}

root_args=() mnist_args=()
[[ -z $data_root ]] || root_args=(--data-root "$data_root")
[[ -z $mnist_dir ]] || mnist_args=(--from-dir "$mnist_dir")
# The offline datasets first, so that they exist even where the MNIST download fails.
run data_scripts/create_tetrominoes.py "${root_args[@]}"
run data_scripts/create_polygons.py "${root_args[@]}"
run data_scripts/download_mnist.py "${root_args[@]}" "${mnist_args[@]}"
run data_scripts/create_multi_mnist.py "${root_args[@]}"
run data_scripts/verify_datasets.py "${root_args[@]}"
