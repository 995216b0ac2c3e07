#!/usr/bin/env bash
# Polygons, NWM (16 hidden channels): the linear readout x 10 seeds (configs.GRID).
source "$(dirname "$0")/../lib.sh"
launch --grid polygons/nwm "$@"
