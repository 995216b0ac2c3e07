#!/usr/bin/env bash
# Polygons, NWM with 16 hidden channels (train.py's default on this dataset) and the
# linear readout x 10 seeds (docs/methods.md, "Experiments": multi-polygon classification).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

launch --paper-seeds 10 --config="--dataset polygons --model nwm --readout linear" "$@"
