#!/usr/bin/env bash
# Advances runs by a time slice, for machines held for a limited time (a GPU lent for half an
# hour, a pre-emptible queue): the runs live in a runs root that travels with you (by default
# results/runs, committed), and each slice moves every run forward and packs the run
# directories to bring back. See docs/reproducing.md, "Advancing runs in time slices".
#
#   scripts/advance_runs.sh COMMANDS_FILE --minutes 9 --per-gpu 4 --mnist-from-dir DIR --archive OUT/runs
#
# COMMANDS_FILE holds train.py commands, one a line (e.g. what a family script prints with
# --dry-run; read with shell rules: quotes, `# notes`; a line that is not a train.py command is
# refused with its number before anything runs). In order, this script
#   1. creates the datasets the commands train on, under --data-root, MNIST and Multi-MNIST
#      from --mnist-from-dir (the four files, any form), and checks every array against its
#      dataset.json and the paper's SHA-256 (data_scripts/verify_datasets.py): it stops
#      before any training if one differs;
#   2. runs the commands, --per-gpu at a time on each GPU (on the CPU where there is none,
#      each of the N at once pinned to its share of the cores), each with --runs-root,
#      --data-root and --stop-after-minutes M added: a run pauses after the epoch in which it
#      passes M minutes, finishes (and is tested) when its budget is spent, and continues
#      where it paused the next time (with --queue: what is left of M when it starts);
#   3. packs the directories of the runs it touched, and the runs' logs (<runs root>/logs/), into
#      ARCHIVE.tar.gz.part-aa, -ab, ... of at most --part-mb MB each; unpack them with
#      cat ARCHIVE.tar.gz.part-* | tar xzf - -C RUNS_ROOT
#
# The options (--minutes M, required; --queue, --min-start, --per-gpu, --gpu-gb, --runs-root,
# --data-root, --mnist-from-dir, --archive, --part-mb, --python) are launch.py's, listed below.
#
# It runs launch.py --slice. Stopping it (SIGTERM, SIGINT, SIGHUP: `kill PID` of a `nohup ... &`
# slice) pauses its runs and leaves no process behind.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
launch --slice "$@"
