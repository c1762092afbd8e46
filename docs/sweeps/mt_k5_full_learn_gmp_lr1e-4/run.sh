#!/bin/bash
# Full-width recipe on magnetic_tile: the ladder's recipe with AdamW's peak rate 1e-4, folds in order (resumable).
# Run it from the root of a checkout of commit a7b2ebb (every run of this sweep came from it):
#   git worktree add ../ladder a7b2ebb && cd ../ladder && bash ../main/docs/sweeps/mt_k5_full_learn_gmp_lr1e-4/run.sh
# after copying this folder to runs/recipe/w1_lr1e-4 there (finished runs are skipped).
set -e
[ -f launch/sweep.py ] || { echo "run.sh: run it from the root of a checkout of a7b2ebb" >&2; exit 2; }
python launch/sweep.py --out=runs/recipe/w1_lr1e-4 --configs=beta_a,beta_c --seeds=0 --quick --learn \
  --kfold=5 --folds=0,1,2,3,4 --data=magnetic_tile --manual_dir=../shared/data/magnetic_tile \
  --floors=docs/sweeps/mt_k5_quick/floors.json --override=model.head=gmp --override=model.width_mult=1.0 \
  --override=optimizer.learning_rate=0.0001
