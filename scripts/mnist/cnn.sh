#!/usr/bin/env bash
# MNIST, feed-forward CNN baseline: depths 2, 4, 8, 16, 32 (3x3 convolutions) x 10 seeds
# (docs/methods.md, "Results").
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
parse_options "$@"

for depth in 2 4 8 16 32; do
  add_config --dataset mnist --model cnn --depth "$depth"
done
run_grid 10
