"""The process exit codes of `runner run`, shared by `runner status` so one cron `case` fits both.

    code  run                                            status
    0     every job succeeded                            every job of INPUT has a success line
    1     finished, but some jobs failed (their error    nothing left for a plain rerun, but some
          lines are in OUTPUT), or INPUT has bad or      jobs failed permanently, or INPUT has bad
          duplicate lines                                or duplicate lines
    2     usage error, unreadable input, OUTPUT in use   INPUT or OUTPUT cannot be read, or a usage
          by another run, --redis unreachable, or a      error
          setting that cannot work (a redirect to
          another origin, a fresh Entra ID token
          refused: `runner.errors.ConfigurationError`)
    3     stopped early and resumable: quota, key        work remains: jobs without a result line
          rejected, a signal, OUTPUT or INPUT could      or failed transiently; the same `runner
          no longer be written or read, --redis lost     run` command resumes them
    4     `--via batch --no-wait`: batches are still     batches of OUTPUT are still open at the
          running at the provider; run the same          provider (from its state file): run the
          command again later                            same `runner run` command again later
    70    internal error: a bug (EX_SOFTWARE)            -

`runner estimate` exits 0, or 2 for an unreadable INPUT or price file.
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2
EXIT_STOPPED = 3
EXIT_IN_PROGRESS = 4  # the hosted Batch API is still working on batches of this run
EXIT_BUG = 70  # EX_SOFTWARE: an internal error
