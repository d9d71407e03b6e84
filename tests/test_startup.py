"""Start-up: a command loads what it runs and nothing else.

`runner --help` (like `import runner.cli.main`) loads no HTTP client, no batch backend, no report
of another command, no tokenizer and no rich. A live `runner run` whose stderr is no terminal
writes plain lines (no rich), and loads neither the batch backend nor tiktoken while every prompt
fits its context window by its byte length. Which modules load is checked, not how long it takes
(the time is measured by `bench/startup.py`, figures in docs/benchmarks.md).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parent.parent

NEEDED_BY_NO_COMMAND_AT_START = (
    "aiohttp", "rich", "tiktoken",
    "runner.batch.run", "runner.cli.batch", "runner.batch.client", "runner.batch.collect",
    "runner.report.estimate", "runner.report.status", "runner.report.render",
    "jobs.estimate", "jobs.merge", "runner.simulator.server",
    "jinja2", "jsonschema", "pyarrow", "runner.dataset", "runner.files.tables", "jobs.prepare",
)
NEEDED_BY_NO_LIVE_RUN = (
    "rich", "tiktoken", "runner.batch.run", "runner.cli.batch", "runner.batch.client",
    "runner.report.estimate", "runner.report.status",
)


def loaded(code: str, modules: tuple[str, ...], env: dict[str, str] | None = None) -> list[str]:
    """Which of `modules` are in sys.modules once `code` has run in a fresh interpreter whose
    stderr is a pipe."""
    probe = code + f"\nimport sys\nprint('loaded:', *(m for m in {modules!r} if m in sys.modules))\n"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.splitlines()[-1].split()[1:]


@pytest.mark.slow  # starts a process
def test_the_cli_loads_without_aiohttp():
    code = "import sys, runner.cli.main; print('aiohttp' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.slow  # starts a process
def test_help_loads_no_backend_report_tokenizer_or_rich():
    code = ("from runner.cli.main import main\n"
            "for argv in (['--help'], ['run', '--help']):\n"
            "    try:\n"
            "        main(argv)\n"
            "    except SystemExit as e:\n"
            "        assert e.code == 0, e.code\n")
    assert loaded(code, NEEDED_BY_NO_COMMAND_AT_START) == []


@pytest.mark.slow  # starts a process
def test_a_live_run_off_a_terminal_loads_neither_rich_nor_the_batch_backend_nor_tiktoken(tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_bytes(b"".join(orjson.dumps(
        {"custom_id": f"job-{i}", "method": "POST", "url": "/v1/completions",
         "body": {"model": "gpt-3.5-turbo-instruct", "prompt": f"question {i}", "max_tokens": 20}})
        + b"\n" for i in range(5)))
    code = ("from runner.simulator.config import SimConfig\n"
            "from runner.simulator.server import run_in_thread\n"
            "from runner.cli.main import main\n"
            "with run_in_thread(SimConfig(rpm=600, tpm=100_000)) as url:\n"
            "    try:\n"
            f"        main(['run', {str(jobs)!r}, '-o', {str(tmp_path / 'out.jsonl')!r},\n"
            "              '--base-url', url, '--rpm', '600', '--tpm', '100000'])\n"
            "    except SystemExit as e:\n"
            "        assert e.code == 0, e.code\n")
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    env["OPENAI_API_KEY"] = "sk-test-startup"
    assert loaded(code, NEEDED_BY_NO_LIVE_RUN, env) == []
    assert len((tmp_path / "out.jsonl").read_bytes().splitlines()) == 5


@pytest.mark.slow  # starts a process
def test_the_entry_point_runs_the_command_with_the_collector_on_and_start_up_objects_frozen():
    """`runner` and `python -m runner` freeze what start-up imported (`runner.__main__`); the
    command itself runs with garbage collection on, and its exit code comes through."""
    code = ("import gc, sys\n"
            "import runner.cli.main as cli\n"
            "@cli.main.command('gc-probe')\n"
            "def probe():\n"
            "    print('probe:', gc.isenabled(), gc.get_freeze_count() > 10_000)\n"
            "    sys.exit(3)\n"
            "sys.argv = ['runner', 'gc-probe']\n"
            "from runner.__main__ import main\n"
            "main()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 3, out.stderr[-3000:]
    assert out.stdout.splitlines() == ["probe: True True"]
    project = (ROOT / "pyproject.toml").read_text()
    assert 'runner = "runner.__main__:main"' in project
