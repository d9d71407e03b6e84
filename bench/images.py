"""Issues 12 and 21 benchmark: image jobs under an images-per-minute (IPM) limit, on virtual time.

    python bench/images.py                      # IPM 120, 600 and 3,000: two minutes of images each
    python bench/images.py --ipm 600 --jobs 300 [--latency-ms 4000]

The simulator and the runner share `runner.clock`'s virtual-time loop over real loopback sockets,
so minutes of pacing take seconds. Each job asks dall-e-2 for n images (1, 2 or 3 in turn, url
answers downloaded and saved) against a server allowing IPM images a minute (and as many
requests) with a bucket of `BURST_S` seconds, answering after `LATENCY_MS` (+-10 %: dall-e-2's
small sizes take a few seconds), downloads taking as long, 2 % of them failing. Efficiency = the
ideal time (images / IPM, less the server's opening burst, plus the last job's answer and
download) / the measured time. A second column, ``efficiency_safe_burst``, credits only the 1 s
of budget runner takes at once (`DEFAULT_BURST_S`, the safe burst) instead of the server's whole
opening bucket, as bench/short_tpm.py's ideal does: what pacing alone loses. Two rows per level:
the IPM told (`--ipm`), and learned from the server's headers and its first 429. Without --jobs,
each level runs IPM jobs (2 minutes of images).
"""
from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

import orjson

from runner.api.endpoint import Endpoint
from runner.clock import run_virtual
from runner.live.dispatch import DispatchConfig
from runner.live.run import RunConfig, run
from runner.pacing.limiter import DEFAULT_BURST_S
from runner.simulator.config import SimConfig
from runner.simulator.server import Simulator

BURST_S = 5.0
LATENCY_MS = 4000
LEVELS = (120, 600, 3000)  # images per minute: OpenAI's published image limits span these


async def one(folder: Path, jobs: int, ipm: int, told: bool, latency_ms: float = LATENCY_MS) -> dict:
    lines = [{"custom_id": f"sku-{i}", "method": "POST", "url": "/v1/images/generations",
              "body": {"model": "dall-e-2", "prompt": f"product photo {i}", "n": 1 + i % 3,
                       "size": "256x256"}} for i in range(jobs)]
    images = sum(line["body"]["n"] for line in lines)
    (folder / "in.jsonl").write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))
    out = folder / f"out-{told}.jsonl"
    loop = asyncio.get_running_loop()
    config = SimConfig(ipm=ipm, rpm=ipm, burst_s=BURST_S, latency_ms=latency_ms,
                       download_fault_rate=0.02, seed=1)
    async with Simulator(config, clock=loop.time) as sim:
        start = loop.time()
        stats = await run(RunConfig(input=str(folder / "in.jsonl"), output=out,
                                    endpoint=Endpoint(base_url=sim.base_url, api_key="k"),
                                    ipm=ipm if told else None, images_dir=folder / f"img-{told}",
                                    dispatch=DispatchConfig(max_attempts=10)),
                          progress=False, handle_signals=False, log=lambda m: None)
        wall = loop.time() - start
    def ideal_with(burst_s: float) -> float:  # the first burst_s of budget spent at once
        return (images - ipm * burst_s / 60) / ipm * 60 + 2 * latency_ms / 1000

    ideal, ideal_safe = ideal_with(BURST_S), ideal_with(DEFAULT_BURST_S)
    saved = len(list((folder / f"img-{told}").iterdir()))
    return {"ipm": ipm, "limit": "told" if told else "learned", "jobs": stats.succeeded,
            "images": saved, "wall_s": round(wall, 1), "ideal_s": round(ideal, 1),
            "efficiency": round(ideal / wall, 3), "ideal_safe_burst_s": round(ideal_safe, 1),
            "efficiency_safe_burst": round(ideal_safe / wall, 3), "429s": stats.rate_limited,
            "429_share": round(stats.rate_limited / max(1, stats.requests), 4),
            "requests": stats.requests}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=None, help="jobs per level [default: IPM]")
    parser.add_argument("--ipm", type=int, action="append", default=None,
                        help="an IPM level (repeatable) [default: 120, 600, 3000]")
    parser.add_argument("--latency-ms", type=float, default=LATENCY_MS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for ipm in args.ipm or LEVELS:
            for told in (True, False):
                folder = Path(tmp) / f"{ipm}-{told}"
                folder.mkdir()
                row = run_virtual(one(folder, args.jobs or ipm, ipm, told, args.latency_ms),
                                  wait_for_threads=True)
                print(orjson.dumps(row).decode(), flush=True)


if __name__ == "__main__":
    main()
