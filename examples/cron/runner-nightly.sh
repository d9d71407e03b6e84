#!/usr/bin/env bash
# Nightly batch run: resume JOBS into OUTPUT, log, report, exit with runner's code.
#
# The same command every night: a rerun skips jobs that succeeded, retries transient failures
# (rate limits, 5xx, timeouts, quota) and resumes whatever an interrupted run left. Settings
# come from runner.toml in RUNNER_DIR (or RUNNER_* variables); the API key from the environment
# (systemd: EnvironmentFile=; cron: the env file sourced below). Never put the key in this file.
#
# Exit codes (runner's own):
#   0  every job succeeded                  -> nothing left to do
#   1  finished, some jobs failed           -> look at `runner status`; fix, or --retry-failed
#   2  usage error, unreadable input, or OUTPUT locked by a run still going -> look at the log
#   3  stopped early, resumable (quota, key rejected, signal, RUN_WINDOW over) -> next night resumes
#   4  --via batch (via = "batch" in runner.toml) with --no-wait (RUNNER_WAIT=false): batches
#      still run at the provider -> run again later (every 30 minutes suits the Batch API)
set -uo pipefail

RUNNER_DIR=${RUNNER_DIR:-/srv/batch}            # holds runner.toml, the jobs and the results
JOBS=${JOBS:-jobs.jsonl}
OUTPUT=${OUTPUT:-results.jsonl}
LOG_FILE=${LOG_FILE:-runner.log}
RUN_WINDOW=${RUN_WINDOW:-7h}                    # stop (SIGTERM, resumable) after this long
RUNNER=${RUNNER:-runner}                        # e.g. /opt/runner/venv/bin/runner
ENV_FILE=${ENV_FILE:-/etc/runner/env}           # OPENAI_API_KEY=... (mode 600), optional

cd "$RUNNER_DIR" || exit 2
if [[ -r "$ENV_FILE" ]]; then
    set -a; . "$ENV_FILE"; set +a
fi

stamp() { date '+%Y-%m-%d %H:%M:%S'; }
echo "$(stamp) runner-nightly: start $JOBS -> $OUTPUT (window $RUN_WINDOW)" >>"$LOG_FILE"

# --preserve-status: when the window ends, runner gets SIGTERM, writes what is on the wire, and
# exits 3 (resumable); timeout then exits with that code instead of its own 124.
timeout --preserve-status --signal=TERM --kill-after=60s "$RUN_WINDOW" \
    "$RUNNER" run "$JOBS" --output "$OUTPUT" --log-file "$LOG_FILE" --status-every 60
code=$?

case $code in
    0) verdict="all jobs done" ;;
    1) verdict="finished, some jobs failed: runner status $JOBS --output $OUTPUT" ;;
    2) verdict="usage error, unreadable input, or another run holds $OUTPUT.lock" ;;
    3) verdict="stopped early, resumable: the next run continues" ;;
    4) verdict="batches still running at the provider: the next run collects them" ;;
    *) verdict="unexpected exit code (killed?); the next run resumes" ;;
esac
echo "$(stamp) runner-nightly: exit $code: $verdict" >>"$LOG_FILE"

# A summary of where the file stands, for the log (read-only; never changes OUTPUT).
"$RUNNER" status "$JOBS" --output "$OUTPUT" >>"$LOG_FILE" 2>&1

exit "$code"
