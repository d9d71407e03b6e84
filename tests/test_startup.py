"""Start-up: a command that sends nothing does not pay for the HTTP client."""
from __future__ import annotations

import subprocess
import sys


def test_the_cli_loads_without_aiohttp():
    code = "import sys, runner.cli.main; print('aiohttp' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
