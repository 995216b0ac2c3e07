#!/usr/bin/env bash
# Tetrominoes, feed-forward CNN baseline: depths 2, 4, 8, 16, 32 (3x3 convolutions) x 10 seeds
# (docs/methods.md, "Results").
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

configs=()
for depth in 2 4 8 16 32; do
  configs+=(--config="--dataset tetrominoes --model cnn --depth $depth")
done
launch --paper-seeds 10 "${configs[@]}" "$@"
