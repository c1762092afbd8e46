#!/bin/bash
# bf16 vs float32 training at 1/16 width, :quick,learn + gmp, beta 0, seed 0, 5 folds, one commit
cd "$(dirname "$0")/../.."  # the repo root: made as runs/bf16/run.sh in a checkout of the runs' commit
for dt in float32 bfloat16; do
  python launch/sweep.py --out=runs/bf16/$dt --configs=beta_a --seeds=0 --quick --learn --kfold=5 \
    --data=magnetic_tile --manual_dir=../shared/data/magnetic_tile --floors=docs/sweeps/mt_k5_quick/floors.json \
    --override=model.head=gmp --override=model.dtype=$dt
done
echo done
