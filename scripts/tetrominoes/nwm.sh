#!/usr/bin/env bash
# Tetrominoes, NWM (2 hidden channels, T=100): the five temporal readouts x 10 seeds (configs.GRID).
source "$(dirname "$0")/../lib.sh"
launch --grid tetrominoes/nwm "$@"
