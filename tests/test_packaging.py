"""runner as users install it: a wheel built from this tree, installed into a fresh virtual
environment, runs `runner demo` from another directory; and what the install pulls in.

Offline: the wheel is built with `--no-build-isolation` (setuptools from the `test` extra), and the
venv sees this environment's site-packages for the dependencies, so nothing is downloaded. That
environment may hold an editable install of runner pointing at some source tree, so the demo test
proves, from the demo's own import log, that every `runner` and `jobs` module it ran came from the
venv.
"""
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import orjson
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
NOT_SOURCE = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__",
                                    ".pytest_cache", ".venv", "venv")
OUR_MODULE = re.compile(r"(/[^\s']*/(?:runner|jobs)/[^\s']*\.pyc?)\b")  # in `python -v` lines


def check(args: list, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300,
                          **kwargs)
    assert proc.returncode == 0, f"{args}\n{proc.stdout}\n{proc.stderr}"
    return proc


def outside_env(**extra: str) -> dict[str, str]:
    """This environment minus what would put a source tree first on the import path."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE")}
    return {**env, **extra}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of this tree (no stale build/ directory, nothing left behind)."""
    tmp = tmp_path_factory.mktemp("wheel")
    shutil.copytree(ROOT, tmp / "src", ignore=NOT_SOURCE)
    check([sys.executable, "-m", "pip", "wheel", tmp / "src", "--no-deps", "--no-build-isolation",
           "--no-index", "-q", "-w", tmp / "dist"], env=outside_env())
    [built] = (tmp / "dist").glob("runner-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv with runner installed from `wheel` alone; dependencies are this environment's."""
    path = tmp_path_factory.mktemp("venv") / "venv"
    check([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", path])
    python = path / "bin" / "python"
    # pip comes from the system site-packages; --ignore-installed so an installed runner (editable
    # or not) is neither taken as already satisfying the wheel nor uninstalled.
    check([python, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", "-q",
           wheel], env=outside_env())
    return path


def test_the_installed_runner_demo_runs_every_job_from_anywhere(venv, tmp_path):
    site = check([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                 env=outside_env()).stdout.strip()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run([venv / "bin" / "runner", "demo"], cwd=elsewhere, capture_output=True,
                          text=True, timeout=300, env=outside_env(PYTHONVERBOSE="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]

    ran = set(OUR_MODULE.findall(proc.stderr))  # `python -v`: every module file it imported
    assert any(p.endswith("/runner/cli/main.py") for p in ran), "no import log of runner.cli.main"
    assert {p for p in ran if not p.startswith(site + "/")} == set(), "ran a copy outside the venv"

    shipped = Path(site) / "runner" / "cli" / "demo.jsonl"
    jobs = {orjson.loads(line)["custom_id"] for line in shipped.read_bytes().splitlines()}
    records = [orjson.loads(line) for line in (elsewhere / "demo-results.jsonl").read_bytes().splitlines()]
    assert len(jobs) == 500
    assert {r["custom_id"] for r in records if r["error"] is None} == jobs


def test_the_wheel_requires_what_the_docs_list(wheel):
    """Runtime dependencies are the "What the install pulls in" list of docs/architecture.md;
    the bench's asyncio-throttle is an extra."""
    with zipfile.ZipFile(wheel) as zf:
        [name] = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = zf.read(name).decode()
    requires = re.findall(r"^Requires-Dist: ([A-Za-z0-9_.-]+)(.*)$", metadata, re.MULTILINE)
    runtime = {dist for dist, rest in requires if "extra ==" not in rest}
    assert ("asyncio-throttle", '>=1.0.2; extra == "bench"') in requires
    docs = (ROOT / "docs" / "architecture.md").read_text()
    section = docs.split("## What the install pulls in and why", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^- \*\*([A-Za-z0-9_.-]+)\*\*", section, re.MULTILINE))
    assert runtime == listed


def test_token_counting_never_imports_numpy():
    """numpy comes with quicktok-v1, whose data files we read without importing quicktok: the
    whole command line and both encodings work with `import numpy` made to fail."""
    code = ("import sys; sys.modules['numpy'] = None\n"
            "import runner.cli.main\n"
            "from runner import tokenizer as tokens\n"
            "for name in ('o200k_base', 'cl100k_base'):\n"
            "    assert tokens.get_encoding(name).encode_ordinary('hello world') , name\n")
    check([sys.executable, "-W", "error::RuntimeWarning", "-c", code], cwd=ROOT,
          env=outside_env(PYTHONPATH=str(ROOT)))


@pytest.mark.slow  # starts runner processes
def test_a_jobs_py_in_the_current_folder_never_stands_in_for_runners_own(tmp_path):
    """`python -m runner` puts the current folder first on sys.path: a user's jobs.py there must
    not be imported in place of runner's pure core."""
    import subprocess
    import sys
    (tmp_path / "jobs.py").write_text("raise SystemExit('the wrong jobs.py was imported')\n")
    proc = subprocess.run([sys.executable, "-m", "runner", "estimate", "--help"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "wrong jobs.py" not in proc.stdout + proc.stderr
    probe = subprocess.run([sys.executable, "-c", "import runner, jobs, jobs.reader; "
                            "print(jobs.__file__)"], cwd=tmp_path, capture_output=True, text=True,
                           timeout=60)
    assert probe.returncode == 0 and str(tmp_path) not in probe.stdout, probe.stdout
