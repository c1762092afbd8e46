#!/usr/bin/env bash
# Trains the paper's five variants (Table 1) one after another on one machine.
#   launch/all_betas.sh [quick] [extra flags...]
# e.g. launch/all_betas.sh quick --config.seed=1
# Each run writes runs/beta_<x>[_quick]/ and resumes there if interrupted.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-}"
if [[ "$mode" == "quick" ]]; then shift; suffix=":quick"; else suffix=""; fi
for v in a b c d e; do
  python -m smsdd_jax.main --config="configs/beta_${v}.py${suffix}" "$@"
done
