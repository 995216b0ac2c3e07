#!/usr/bin/env bash
# MNIST, NWM (hidden channels 2, T=100): the five temporal readouts x 10 seeds (docs/methods.md, "Results").
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

configs=()
for readout in linear fft last mean_time max_time; do
  configs+=(--config="--dataset mnist --model nwm --readout $readout")
done
launch --paper-seeds 10 "${configs[@]}" "$@"
