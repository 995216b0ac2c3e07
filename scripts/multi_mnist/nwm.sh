#!/usr/bin/env bash
# Multi-MNIST, NWM (16 hidden channels): the linear readout x 12 seeds (configs.GRID).
source "$(dirname "$0")/../lib.sh"
launch --grid multi_mnist/nwm "$@"
