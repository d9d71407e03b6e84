"""Files runner creates that hold what jobs asked or answered are private to their owner (0o600,
folders 0o700) even under a permissive umask; a file that already exists keeps its mode."""
from __future__ import annotations

import contextlib
import os
import stat

import pytest
from click.testing import CliRunner

from runner.api.endpoint import Endpoint
from runner.batch.run import BatchRunConfig, run_batch
from runner.batch.state import chunks_dir, state_path
from runner.cli.main import main
from runner.files.images import write_new_file
from runner.live.run import RunConfig, run
from runner.simulator.batches import BatchConfig
from runner.simulator.server import SimConfig, Simulator
from tests.test_e2e import write_jobs


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


async def test_a_new_output_is_created_private_under_a_permissive_umask(tmp_path):
    write_jobs(tmp_path / "in.jsonl", 3)
    with umask(0o022):
        async with Simulator(SimConfig()) as sim:
            stats = await run(RunConfig(input=str(tmp_path / "in.jsonl"), output=tmp_path / "out.jsonl",
                                        endpoint=Endpoint(base_url=sim.base_url, api_key="sk-x")),
                              progress=False, handle_signals=False, log=lambda m: None)
    assert stats.exit_code() == 0
    assert mode(tmp_path / "out.jsonl") == 0o600


async def test_an_existing_output_keeps_the_mode_its_owner_gave_it(tmp_path):
    write_jobs(tmp_path / "in.jsonl", 3)
    (tmp_path / "out.jsonl").touch()
    os.chmod(tmp_path / "out.jsonl", 0o640)  # shared with a group on purpose
    async with Simulator(SimConfig()) as sim:
        await run(RunConfig(input=str(tmp_path / "in.jsonl"), output=tmp_path / "out.jsonl",
                            endpoint=Endpoint(base_url=sim.base_url, api_key="sk-x")),
                  progress=False, handle_signals=False, log=lambda m: None)
    assert mode(tmp_path / "out.jsonl") == 0o640


def test_image_files_and_their_new_folder_are_private(tmp_path):
    with umask(0o022):
        path = write_new_file(tmp_path / "out.images", "job-0", "png", b"\x89PNG data")
    assert mode(path) == 0o600 and mode(tmp_path / "out.images") == 0o700


def test_a_batch_runs_journal_and_its_folder_of_chunk_files_are_private(loop, tmp_path):
    write_jobs(tmp_path / "in.jsonl", 6, kinds=("chat",))
    sim = Simulator(SimConfig(), clock=loop.time,
                    batch=BatchConfig(lines_per_s=100, validate_s=1, finalize_s=1))
    loop.run_until_complete(sim.start())
    try:
        config = BatchRunConfig(input=str(tmp_path / "in.jsonl"), output=tmp_path / "out.jsonl",
                                endpoint=Endpoint(base_url=sim.base_url, api_key="sk-x"),
                                poll_every=1.0)
        with umask(0o022):
            stats = loop.run_until_complete(run_batch(config, progress=False, handle_signals=False,
                                                      log=lambda m: None))
    finally:
        loop.run_until_complete(sim.stop())
    assert stats.exit_code() == 0
    output = tmp_path / "out.jsonl"
    assert mode(output) == 0o600 and mode(state_path(output)) == 0o600
    assert mode(chunks_dir(output)) == 0o700


def test_a_merged_output_is_private(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"custom_id": "a", "response": {"status_code": 200}, "error": null}\n')
    with umask(0o022):
        result = CliRunner().invoke(main, ["merge", str(tmp_path / "a.jsonl"),
                                           "-o", str(tmp_path / "all.jsonl")])
    assert result.exit_code == 0, result.output
    assert mode(tmp_path / "all.jsonl") == 0o600


@pytest.mark.parametrize("mask", [0o077, 0o027])
def test_a_stricter_umask_still_applies(tmp_path, mask):
    with umask(mask):
        path = write_new_file(tmp_path / "imgs", "x", "png", b"data")
    assert mode(path) == 0o600 & ~mask
