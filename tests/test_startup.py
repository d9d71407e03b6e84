"""Start-up: a command loads what it runs and nothing else.

`runner --help` (like `import runner.cli.main`) loads no HTTP client, no batch backend, no report
of another command and no tokenizer (tiktoken loads with the first encoding built). Which modules load is checked, not how long it takes (the time is
measured by `bench/startup.py`, figures in the README).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

NEEDED_BY_NO_COMMAND_AT_START = (
    "aiohttp", "tiktoken",
    "runner.batch.run", "runner.batch.cli", "runner.batch.client", "runner.batch.collect",
    "runner.report.estimate", "runner.report.status", "runner.report.render",
    "jobs.estimate", "jobs.merge", "runner.simulator.server",
)


def loaded(code: str, modules: tuple[str, ...], env: dict[str, str] | None = None) -> list[str]:
    """Which of `modules` are in sys.modules once `code` has run in a fresh interpreter whose
    stderr is a pipe."""
    probe = code + f"\nimport sys\nprint('loaded:', *(m for m in {modules!r} if m in sys.modules))\n"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.splitlines()[-1].split()[1:]


def test_the_cli_loads_without_aiohttp():
    code = "import sys, runner.cli.main; print('aiohttp' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_help_loads_no_batch_backend_other_commands_report_or_tokenizer():
    code = ("from runner.cli.main import main\n"
            "for argv in (['--help'], ['run', '--help']):\n"
            "    try:\n"
            "        main(argv)\n"
            "    except SystemExit as e:\n"
            "        assert e.code == 0, e.code\n")
    assert loaded(code, NEEDED_BY_NO_COMMAND_AT_START) == []

