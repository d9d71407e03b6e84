"""Issue 20 item 6's measurement: a real LiteLLM proxy limiting each key and model to 60 RPM in
fixed 60 s windows (its v3 rate limiter: every deployment's ``default_api_key_rpm_limit``, the
master key), and runner with no flags on 120 chat jobs, 120 completions with ``n=2`` and 60
embeddings, each kind on its own model. The ideal is two windows: 60 s (120 requests per model at
60 a window; the first window's requests go at once). Target: every job succeeds within 1.25 ×.

    python bench/litellm_key_limits.py --litellm VENV/bin/litellm [-- RUNNER FLAGS...]

LiteLLM needs its own virtual environment (``pip install 'litellm[proxy]>=1.108'``, ~750 MB).
Prints one line: exit code, wall seconds (runner's own process, start to end), jobs ok, 429s.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers import LITELLM_MASTER_KEY, LITELLM_MOCK_RESPONSE, LiteLLMProxy  # noqa: E402

RPM = 60
IDEAL_S = 60.0
MODELS = ("gpt-4o-mini", "gpt-3.5-turbo-instruct", "text-embedding-3-small")


class KeyLimitedProxy(LiteLLMProxy):
    """`LiteLLMProxy` whose limits are per key and model (the v3 limiter's fixed windows), not
    per deployment and calendar minute (the router's)."""

    def config_text(self) -> str:
        lines = ["model_list:"]
        for model in self.models:
            lines += [f"  - model_name: {model}", "    litellm_params:",
                      f"      model: openai/{model}", "      api_key: sk-unused",
                      "      api_base: http://127.0.0.1:9/v1",
                      f"      mock_response: {json.dumps(LITELLM_MOCK_RESPONSE)}",
                      f"      default_api_key_rpm_limit: {RPM}"]
        lines += ["router_settings:", "  num_retries: 0",
                  "general_settings:", f"  master_key: {LITELLM_MASTER_KEY}",
                  "litellm_settings:", "  telemetry: false", "  drop_params: true",
                  "  num_retries: 0"]
        return "\n".join(lines) + "\n"


def jobs() -> list[dict]:
    chat, completions, embeddings = MODELS
    return ([{"custom_id": f"chat-{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": chat, "messages": [{"role": "user", "content": f"q {i}"}]}}
             for i in range(120)]
            + [{"custom_id": f"cmpl-{i}", "method": "POST", "url": "/v1/completions",
                "body": {"model": completions, "prompt": f"p {i}", "n": 2, "max_tokens": 5}}
               for i in range(120)]
            + [{"custom_id": f"emb-{i}", "method": "POST", "url": "/v1/embeddings",
                "body": {"model": embeddings, "input": f"e {i}"}} for i in range(60)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--litellm", required=True, help="The litellm executable.")
    parser.add_argument("flags", nargs="*", help="Flags for runner run (after --).")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="litellm-key-limits-"))
    proxy = KeyLimitedProxy(args.litellm, MODELS, work_dir=work)
    proxy.start()
    try:
        source, out = work / "in.jsonl", work / "out.jsonl"
        source.write_text("".join(json.dumps(job) + "\n" for job in jobs()))
        env = {**os.environ, "OPENAI_API_KEY": LITELLM_MASTER_KEY,
               "OPENAI_BASE_URL": proxy.base_url}
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "runner", "run", str(source), "-o", str(out),
                               "--no-progress", *args.flags], env=env, cwd=ROOT,
                              capture_output=True, text=True)
        wall = time.monotonic() - started
    finally:
        proxy.stop()
    records = [json.loads(line) for line in out.read_text().splitlines()]
    codes = collections.Counter((r["error"] or {}).get("code") or "ok" for r in records)
    rate_limited = next((line for line in done.stderr.splitlines() if "rate-limited" in line), "")
    print(f"exit {done.returncode} · wall {wall:.1f} s ({wall / IDEAL_S:.2f} × the ideal "
          f"{IDEAL_S:g} s) · {dict(codes)} · {rate_limited.strip()}")
    print("\n".join(line for line in done.stderr.splitlines() if "packing off" in line))


if __name__ == "__main__":
    main()
