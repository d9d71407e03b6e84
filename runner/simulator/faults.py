"""Fault injection: one draw per admitted request (`draw_fault`), one function that applies the
fault drawn to what the request would have got (`apply_fault`), for every endpoint, over HTTP and
as a line of a hosted batch alike.

    fault            over HTTP                                     as a batch line
    500, 503         that status, OpenAI's server error body       the same
    reset            the connection closed, nothing sent           500
    hang             answered, `hang_s` late (the caller sleeps)   500
    truncated        200, the JSON body cut in half                500
    missing_choice   200, valid JSON, 1 to `max_dropped` items     the same
                     (choices, embeddings, moderation results)
                     dropped from an answer of several, at least
                     one kept; an answer of one is sent whole

Rates: `SimConfig.fault_rate` gives one probability, the fault then chosen evenly among
`SimConfig.faults`; `SimConfig.fault_rates` gives each fault its own probability, drawn with one
number. Both draw on the simulator's seeded random source only, so a run is reproducible.
"""
from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from runner.simulator.config import SimConfig
from runner.simulator.parsing import OVERLOADED_ERROR, SERVER_ERROR


def draw_fault(config: SimConfig, rng: random.Random) -> str | None:
    """The fault an admitted request meets, or None (no draw at all when no fault is set)."""
    if config.fault_rates:
        point = rng.random()
        for fault, rate in config.fault_rates:
            if point < rate:
                return fault
            point -= rate
        return None
    if config.fault_rate <= 0 or rng.random() >= config.fault_rate:
        return None
    return rng.choice(config.faults)


@dataclass(frozen=True, slots=True)
class Reply:
    """What a request gets once its fault is applied.

    `status` and `body` (the JSON answer or error body); `raw`, the bytes of a 200 to send (cut in
    half when `truncated`); `reset`: close the connection and send nothing (status 0, no body);
    `dropped`: the items a partial answer left out; `complete`: a 200 with every item, uncut.
    """

    status: int
    body: dict[str, Any] | None
    raw: bytes = b""
    reset: bool = False
    truncated: bool = False
    dropped: int = 0

    @property
    def complete(self) -> bool:
        return self.status == 200 and not self.truncated and not self.dropped


def apply_fault(fault: str | None, answer: Callable[[], dict[str, Any]], items: str | None, *,
                rng: random.Random, max_dropped: int = 1, over_http: bool = True) -> Reply:
    """The reply to a request that met `fault` (None: the healthy answer), see the table above.

    `answer` builds the healthy 200 body; it is called only when the reply carries it, so a
    request answered 500 draws nothing more from `rng`. `items` names the body's list a partial
    answer drops from (None: the answer has none to drop). `over_http` False: a batch line, where
    every fault that breaks an answer's transport is reported as a 500.
    """
    if fault == "503":
        return Reply(503, OVERLOADED_ERROR)
    if fault == "500" or (not over_http and fault in ("reset", "hang", "truncated")):
        return Reply(500, SERVER_ERROR)
    if fault == "reset":
        return Reply(0, None, reset=True)
    body = answer()
    dropped = 0
    listed = body.get(items) if items is not None else None
    if fault == "missing_choice" and isinstance(listed, list) and len(listed) > 1:
        most = min(max_dropped, len(listed) - 1)
        dropped = 1 if most == 1 else 1 + rng.randrange(most)  # one draw fewer for the usual 1
        for _ in range(dropped):
            listed.pop(rng.randrange(len(listed)))
    raw = orjson.dumps(body)
    if fault == "truncated":
        return Reply(200, body, raw[:len(raw) // 2], truncated=True)
    return Reply(200, body, raw, dropped=dropped)
