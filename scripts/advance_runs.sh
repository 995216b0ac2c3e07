#!/usr/bin/env bash
# Advances runs by a time slice on a machine held for a limited time (docs/reproducing.md, "Advancing
# runs in time slices"), e.g.
#   scripts/advance_runs.sh COMMANDS_FILE --minutes 9 --per-gpu 4 --mnist-from-dir DIR --archive OUT/runs
# It creates and checks the datasets of the commands (nothing is trained if one differs), runs each
# train.py command of the file with --runs-root, --data-root and --stop-after-minutes M (--queue:
# --end-by-minutes, what is left of the slice), --per-gpu at a time, and packs the runs it touched.
# SIGTERM, SIGINT and SIGHUP pause its runs, and it leaves no process behind. It runs launch.py --slice:
source "$(dirname "$0")/lib.sh"
launch --slice "$@"
