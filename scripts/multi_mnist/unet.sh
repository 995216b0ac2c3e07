#!/usr/bin/env bash
# Multi-MNIST, U-Net baseline: base widths 2, 3, 4, 5 x 12 seeds (docs/methods.md, "Results").
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

configs=()
for width in 2 3 4 5; do
  configs+=(--config="--dataset multi_mnist --model unet --width $width")
done
launch --paper-seeds 12 "${configs[@]}" "$@"
