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
#
# It runs launch.py --create-data (the create commands are dataset_config's).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
launch --create-data "$@"
