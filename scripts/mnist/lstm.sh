#!/usr/bin/env bash
# MNIST, ConvLSTM baseline (T=20): linear and fft readouts x 10 seeds (docs/methods.md, "Results").
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
parse_options "$@"

for readout in linear fft; do
  add_config --dataset mnist --model lstm --T 20 --readout "$readout"
done
run_grid 10
