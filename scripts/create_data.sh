#!/usr/bin/env bash
# Creates the four datasets under the data root (--data-root, else $WAVES_DATA_ROOT, else ./data)
# where missing, then checks them all: Tetrominoes and Polygons generated offline, MNIST downloaded
# once (or --mnist-from-dir DIR: the four files, any form) and Multi-MNIST made from its digits.
# With --dry-run it prints the commands (dataset_config's) and runs nothing.
source "$(dirname "$0")/lib.sh"
launch --create-data "$@"
