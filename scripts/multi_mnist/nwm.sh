#!/usr/bin/env bash
# Multi-MNIST, NWM with 16 hidden channels (train.py's default on this dataset) and the
# linear readout x 12 seeds (docs/methods.md, "Results").
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

launch --paper-seeds 12 --config="--dataset multi_mnist --model nwm --readout linear" "$@"
