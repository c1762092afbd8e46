#!/bin/bash
# Full-width recipe probe on magnetic_tile fold 0: the ladder's recipe with AdamW's peak rate 1e-4.
cd "$(dirname "$0")/../.."
python launch/sweep.py --out=runs/recipe/w1_lr1e-4 --configs=beta_a,beta_c --seeds=0 --quick --learn \
  --kfold=5 --folds=0,1 --data=magnetic_tile --manual_dir=../shared/data/magnetic_tile \
  --floors=docs/sweeps/mt_k5_quick/floors.json --override=model.head=gmp --override=model.width_mult=1.0 \
  --override=optimizer.learning_rate=0.0001
