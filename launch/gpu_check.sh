#!/usr/bin/env bash
# GPU readiness check: the full-width VGG16 Siamese train step on the GPU, in
# float32 (TF32 convolutions) and bfloat16 compute with float32 master weights,
# XLA's convolutions (conv_impl=auto picks them on GPU), with model-FLOP
# utilisation; then a short full-width training in bfloat16 with the :learn
# recipe on generated pairs (launch/fit_check.py: does the step learn there?);
# writes one JSON report.
#
#   launch/gpu_check.sh [OUT.json] [PAIRS]       (default gpu_check.json, 32,128,256)
#
# Needs jax with a GPU plugin, flax, optax, chex, ml-collections; not
# TensorFlow (the step module and the benchmark do not import it).
set -euo pipefail
out=${1:-gpu_check.json}
pairs=${2:-32,128,256}
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
tmp=$(mktemp -d)
for dtype in float32 bfloat16; do
  "$py" -m smsdd_jax.benchmark --only=train --pairs="$pairs" --steps=20 --rounds=1 \
      --dtype="$dtype" --conv-impl=auto | tee "$tmp/$dtype.log"
done
"$py" launch/fit_check.py --steps=150 --pairs=16 --dtype=bfloat16 --out="$tmp/fit.json"
"$py" - "$tmp" "$out" <<'PY'
import json, sys
tmp, out = sys.argv[1:]
report = {d: json.loads(open(f'{tmp}/{d}.log').read().strip().splitlines()[-1])
          for d in ('float32', 'bfloat16')}
report['fit_bfloat16'] = json.load(open(f'{tmp}/fit.json'))
with open(out, 'w') as f:
  json.dump(report, f, indent=1)
print('wrote', out)
PY
