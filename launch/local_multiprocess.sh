#!/usr/bin/env bash
# N processes on this machine train ONE model together (JAX's distributed
# runtime, CPU collectives over gloo), each reading its own shard of the data.
#   launch/local_multiprocess.sh N --config=configs/beta_c.py:quick --workdir=runs/mp [flags...]
# Process 0 prints to the terminal; every process also logs to
# ${LOG_DIR:-runs/multiprocess_logs}/process_<i>.log. Exits non-zero if any fails.
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:?usage: launch/local_multiprocess.sh N [main.py flags...]}"; shift
port="${PORT:-$((20000 + RANDOM % 20000))}"
log_dir="${LOG_DIR:-runs/multiprocess_logs}"
mkdir -p "$log_dir"
python="${PYTHON:-python}"
pids=()
for ((i = 0; i < n; i++)); do
  args=(-m smsdd_jax.main --distributed --coordinator_address="127.0.0.1:${port}"
        --num_processes="$n" --process_id="$i" "$@")
  if [[ $i -eq 0 ]]; then
    "$python" "${args[@]}" 2>&1 | tee "$log_dir/process_0.log" &
  else
    "$python" "${args[@]}" > "$log_dir/process_${i}.log" 2>&1 &
  fi
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
exit $status
