#!/usr/bin/env bash
# Multi-MNIST, U-Net baseline: base widths 2, 3, 4, 5 x 12 seeds (configs.GRID).
source "$(dirname "$0")/../lib.sh"
launch --grid multi_mnist/unet "$@"
