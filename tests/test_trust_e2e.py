"""The trust issue's server behaviours end to end, through the command line against the simulator:
answers that lack some choices (nothing paid twice) and refused requests that count against the
budget (no livelock)."""
from __future__ import annotations

import orjson
import pytest
from click.testing import CliRunner

from runner.cli.main import main
from runner.simulator.batches import BatchConfig
from runner.simulator.config import SimConfig
from runner.simulator.server import Simulator, run_in_thread
from tests.test_e2e import assert_exactly_once, read_results, write_jobs


@pytest.mark.parametrize("via", ["live", "batch"])
def test_answers_lacking_choices_cost_only_the_jobs_they_lack(tmp_path, monkeypatch, via):
    """A fifth of the answers drop one or two choices: every job gets its own answer once, and no
    prompt is answered (paid) twice: what came back is kept, only the rest goes again."""
    jobs = write_jobs(tmp_path / "in.jsonl", 300, kinds=("completions", "embeddings"))
    out = tmp_path / "out.jsonl"
    sim = Simulator(SimConfig(fault_rates={"missing_choice": 0.2}, max_dropped=2, seed=4),
                    batch=BatchConfig(lines_per_s=1000, validate_s=0.0, finalize_s=0.0))
    with run_in_thread(simulator=sim) as base_url:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key")
        monkeypatch.setenv("OPENAI_BASE_URL", base_url)
        result = CliRunner().invoke(main, ["run", str(tmp_path / "in.jsonl"), "-o", str(out),
                                           "--no-progress", "--via", via, "--poll-every", "0.1",
                                           "--max-attempts", "10"])
    assert result.exit_code == 0, result.output
    assert_exactly_once(jobs, read_results(out))
    assert sim.stats.partial > 0  # the fault happened ...
    paid = sim.stats.answered
    assert max(paid.values()) == 1, [p for p, n in paid.items() if n > 1][:5]  # ... paid once


@pytest.mark.slow  # real time: ~33 s (the run: 160 images over 3 models at 300 RPM)
def test_image_models_sharing_a_key_budget_where_refusals_count_finish_with_few_429s(
        tmp_path, monkeypatch):
    """dall-e-2, dall-e-3 and gpt-image-1 share one request budget and every 429 still takes a
    request from it: the run must slow below the refill rate instead of livelocking."""
    models = ("dall-e-2", "dall-e-3", "gpt-image-1")
    lines = [orjson.dumps({"custom_id": f"img{i}", "method": "POST", "url": "/v1/images/generations",
                           "body": {"model": models[i % 3], "prompt": f"a lighthouse {i}",
                                    "size": "1024x1024", "response_format": "b64_json"}
                           if models[i % 3] != "gpt-image-1" else
                           {"model": "gpt-image-1", "prompt": f"a lighthouse {i}",
                            "size": "1024x1024"}})
             for i in range(160)]
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out.jsonl"
    sim = Simulator(SimConfig(rpm=300, ipm=100_000, burst_s=2, refused_count=True,
                              image_budget_scope="key"))
    with run_in_thread(simulator=sim) as base_url:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key")
        monkeypatch.setenv("OPENAI_BASE_URL", base_url)
        result = CliRunner().invoke(main, ["run", str(tmp_path / "in.jsonl"), "-o", str(out),
                                           "--no-progress"])
    assert result.exit_code == 0, result.output
    records = read_results(out)
    assert len(records) == 160 and all(r["error"] is None for r in records)
    # The target is at most 5 % of requests refused; on virtual time (exact) the same mix
    # meets it with 3-4 % (tests/test_refusals_count.py). Here, in real time, the opening
    # seconds of three lanes cost 8 or 9 refusals of ~168 requests (4.8-5.4 %): the bound below
    # keeps this test about the livelock (before the fix: 600 refusals and no end), not timing.
    assert sim.stats.rate_limited <= 0.06 * sim.stats.requests, (sim.stats.rate_limited,
                                                                 sim.stats.requests)
