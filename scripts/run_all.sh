#!/usr/bin/env bash
# The paper's whole grid: creates the datasets, runs every family of scripts/ in turn with the same
# options, then writes the score table (produce_scores.py, with the --runs-root and --data-root of
# ARGS). With --slurm every family becomes one job array; score the runs once the jobs are done.
source "$(dirname "$0")/lib.sh"
launch --grid all "$@"
