#!/usr/bin/env bash
# Tetrominoes, ConvLSTM baseline (T=20, train.py's default for it): linear and fft readouts x 10 seeds (docs/methods.md, "Results").
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

configs=()
for readout in linear fft; do
  configs+=(--config="--dataset tetrominoes --model lstm --readout $readout")
done
launch --paper-seeds 10 "${configs[@]}" "$@"
