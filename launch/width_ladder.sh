#!/usr/bin/env bash
# The width ladder on magnetic_tile: the recipe that learns at 1/16 width
# (`:quick,learn`, model.head=gmp, beta = 0, seed 0, grouped 5-fold) at
# widths 1/16, 1/8, 1/4 on every fold and 1/2, 1 on folds 0 and 1, one sweep
# per width under OUT_ROOT/w<denominator> (w1 = the paper's VGG16).
#
#   MANUAL_DIR=<magnetic_tile folder> launch/width_ladder.sh [OUT_ROOT]   # default runs/ladder
#
# Cheapest first, and full width's fold 0 before 1/2 width, so that a
# machine that cannot finish still answers the most. Every sweep resumes
# (rerun the same command). The runs compare across widths, so run them all
# from one commit: a pinned checkout, e.g.
#   git worktree add ../ladder <commit> && cd ../ladder && launch/width_ladder.sh
# (the commit each run used is in its config.json). Env: PYTHON (default
# python), MANUAL_DIR (required: the magnetic_tile images, as the builder reads them).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
ROOT=${1:-runs/ladder}
COMMON=(--configs=beta_a --seeds=0 --quick --learn --kfold=5 --data=magnetic_tile
        "--manual_dir=${MANUAL_DIR:?set MANUAL_DIR to the magnetic_tile folder}"
        --floors=docs/sweeps/mt_k5_quick/floors.json --override=model.head=gmp
        # One rate at every width, the 1/16 width's (a width set on the command line
        # would otherwise take :learn's rate for it: 1e-4 at full width, smsdd_jax/main.py).
        --override=optimizer.learning_rate=0.001)

rung() {  # rung DENOMINATOR WIDTH_MULT [--folds=...]
  local name=$1 width=$2
  shift 2
  echo "=== $(date -Is) width $width ($ROOT/w$name) $*"
  "$PY" launch/sweep.py --out="$ROOT/w$name" "${COMMON[@]}" \
    --override=model.width_mult="$width" "$@" || echo "=== w$name exit $?"
}

rung 16 0.0625
rung 8 0.125
rung 4 0.25
rung 1 1.0 --folds=0
rung 2 0.5 --folds=0,1
rung 1 1.0 --folds=0,1
echo "=== $(date -Is) ladder done"
