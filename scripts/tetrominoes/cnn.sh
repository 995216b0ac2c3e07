#!/usr/bin/env bash
# Tetrominoes, feed-forward CNN baseline: depths 2, 4, 8, 16, 32 x 10 seeds (configs.GRID).
source "$(dirname "$0")/../lib.sh"
launch --grid tetrominoes/cnn "$@"
