#!/usr/bin/env bash
# Tetrominoes, ConvLSTM baseline (T=20): linear and fft readouts x 10 seeds (configs.GRID).
source "$(dirname "$0")/../lib.sh"
launch --grid tetrominoes/lstm "$@"
