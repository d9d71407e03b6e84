"""A budget's state kept in Redis, shared by every runner process pointed at it (`--redis URL`).

`RedisBudgetState` is a `BudgetState` whose numbers live in one Redis hash per budget, changed only
by `budget.lua` (beside this file): each operation is one call of that script, atomic on the
server and on the server's clock (``TIME``), so processes on machines whose clocks disagree still
never together admit more than the budget.

The limiter calls the state synchronously, and must not block the event loop on the network. So:

* `admit_async` is the one operation the limiter awaits: a round trip that takes (or refuses)
  both buckets at once. It is what keeps the shared budget exact.
* The writes (`set_limit`, `lower`, `set_level`, `hold`, `set_factor`) return at once: they change
  the local copy and queue the script call; one flusher sends everything queued in one pipeline,
  in order, before any later admission of this process.
* `read` and `level` answer from the copy the last round trip brought back (every call answers the
  whole state), so what other processes learned reaches this one with its next admission.

Keys: ``runner:budget:<fingerprint>``, the fingerprint a keyed BLAKE2b of (API key, base URL,
model) under a random salt stored once in the Redis (``runner:salt``): nothing in the Redis leads
back to the key. Every call renews the key's TTL (`STATE_TTL_S`), so what dead processes left
expires. Nothing is leased. Admission is FIFO across processes (a refused process keeps a place
in the budget's queue, which expires within seconds unless it asks again), and a request that
fits within 2 s is taken at once, to be sent when its turn comes: a process killed in between
loses that one request's budget once (see `budget.lua`).

Redis restarted without persistence (or flushed) mid-run: the script finds the salt gone and says
so; the process sets it again, or adopts the one a process that connected first set, renames its
budgets, and restores in every budget of its own the limits and factor it knew, before what it
was sending. Any process whose round trip shows a budget without a limit it knows (emptied, or
expired) writes it back too. So the processes keep sharing one budget, and a budget is not left
without its limits (which would admit everything) beyond one admission.

Redis lost mid-run: admissions wait (nothing is sent) while the flusher retries with backoff; if
Redis is not back within ``timeout_s`` every waiting call raises `RedisLost`, a `StopRunError`
(the run stops, resumable: exit 3). It never falls back to pacing alone.

Errors::

    RunnerError
     ├── RedisUnavailable   Redis cannot be reached at the start (the CLI exits 2)
     └── StopRunError
          └── RedisLost     Redis was lost mid-run for longer than the timeout (exit 3)
"""
from __future__ import annotations

import asyncio
import hashlib
import math
import secrets
from collections.abc import Callable
from importlib import resources

from typing import TYPE_CHECKING

from runner.errors import RunnerError, StopRunError
from runner.pacing.state import Admission, Kind, Limit, Snapshot
from runner.redact import redact_url

if TYPE_CHECKING:  # redis is imported on first use: `runner --help` does not pay for it
    import redis.asyncio as aioredis

__all__ = ["DEFAULT_REDIS_TIMEOUT_S", "KEY_PREFIX", "RedisBudgets", "RedisBudgetState",
           "RedisLost", "RedisUnavailable", "STATE_TTL_S"]

KEY_PREFIX = "runner:budget:"
SALT_KEY = "runner:salt"
STATE_TTL_S = 600.0
"""A budget untouched this long is forgotten (a bucket refills within a minute; what was learned
beyond that is relearned from the next answer's headers)."""
DEFAULT_REDIS_TIMEOUT_S = 60.0
"""How long a run waits for a lost Redis before it stops (resumable)."""
CONNECT_TIMEOUT_S = 5.0
CLOSE_WAIT_S = 2.0  # see RedisBudgets.close
RETRY_FIRST_S = 0.1  # backoff between reconnection attempts: doubles up to RETRY_MAX_S
RETRY_MAX_S = 5.0
_KINDS: dict[str, str] = {"requests": "r", "tokens": "t"}
_SCRIPT = resources.files("runner.pacing").joinpath("budget.lua").read_text(encoding="utf-8")
_SHA = hashlib.sha1(_SCRIPT.encode()).hexdigest()


class RedisUnavailable(RunnerError):
    """Redis cannot be reached (or refuses us) when the run starts."""


class RedisLost(StopRunError):
    """Redis was unreachable for longer than the timeout during the run: stop, resumable."""


def fingerprint(salt: bytes, api_key: str, base_url: str, model: str) -> str:
    """A budget's name in Redis: keyed BLAKE2b of the key, base URL and model under `salt`."""
    data = b"\0".join(part.encode() for part in (api_key, base_url, model))
    return hashlib.blake2b(data, key=salt, digest_size=20, person=b"runner-budget").hexdigest()


def _float(text: bytes | str) -> float | None:
    return float(text) if text not in (b"", "") else None


def _decode(reply: list) -> tuple[Snapshot, dict[str, float | None], Admission]:
    """The script's answer: the snapshot, both levels, and the admission it decided."""
    limits: list[Limit | None] = []
    levels: dict[str, float | None] = {}
    for kind, at in (("requests", 0), ("tokens", 4)):
        per_minute, source, capacity, level = reply[at:at + 4]
        if per_minute in (b"", ""):
            limits.append(None)
            levels[kind] = None
        else:
            source = source.decode() if isinstance(source, bytes) else source
            limits.append(Limit(float(per_minute), source, float(capacity)))
            levels[kind] = _float(level)
    factor = _float(reply[8])
    wait = float(reply[9])
    snapshot = Snapshot(limits[0], limits[1], factor if factor is not None else 1.0)
    return snapshot, levels, Admission(wait, bool(reply[10]), bool(reply[11]),
                                       send_in_s=float(reply[12]))


def _moved(reply: list) -> str | None:
    """The model name a budget moved to (`RedisBudgetState.rename` by another process), if any."""
    moved = reply[13]
    if moved in (b"", ""):
        return None
    return moved.decode() if isinstance(moved, bytes) else moved


class _Call:
    """One queued script call; `done` resolves with its decoded answer (or `RedisLost`). `key`:
    the budget it is for when not the state's current one (a refund after a rename)."""

    __slots__ = ("args", "done", "key")

    def __init__(self, args: tuple[str, ...], done: asyncio.Future | None,
                 key: str | None = None) -> None:
        self.args, self.done, self.key = args, done, key


class RedisBudgetState:
    """`BudgetState` of one budget in Redis (see the module docstring). Built by `RedisBudgets`.

    ``clock``: the limiter's clock (to turn a `hold` deadline into a duration the server adds to
    its own time). ``timeout_s``: how long Redis may be unreachable before `RedisLost`.
    """

    def __init__(self, budgets: "RedisBudgets", base_url: str, model: str, *,
                 follow_moves: bool = True, timeout_s: float = DEFAULT_REDIS_TIMEOUT_S,
                 clock: Callable[[], float] | None = None,
                 sleep: Callable[[float], object] | None = None) -> None:
        self._budgets = budgets
        self._client = budgets.client
        self._url = budgets.url
        self.base_url, self.model = base_url, model
        self.key = budgets.key(base_url, model)
        self.follow_moves = follow_moves  # go where another process moved the budget (`rename`)
        self._waiter = secrets.token_hex(8)  # this process's place in the budget's queue
        self._reserved_key = self.key  # where the last admission was taken (for its refund)
        self._salt_seen = budgets.salt_generation  # the salt this budget's limits were written under
        self._timeout_s = timeout_s
        self._clock = clock
        self._sleep = sleep or asyncio.sleep
        self._snapshot = Snapshot()
        self._levels: dict[str, float | None] = {"requests": None, "tokens": None}
        self._levels_at = 0.0
        self._queue: list[_Call] = []
        self._flusher: asyncio.Task | None = None
        self._lost: RedisLost | None = None
        self.round_trips = 0

    def _now(self) -> float:
        if self._clock is None:
            self._clock = asyncio.get_running_loop().time
        return self._clock()

    # -- BudgetState ---------------------------------------------------------------------------

    shared = True  # every process pointed at the Redis spends it

    def read(self) -> Snapshot:
        return self._snapshot

    async def admit_async(self, tokens: float) -> Admission:
        """`BudgetState.admit_async` as one round trip (after every write queued before it)."""
        done = asyncio.get_running_loop().create_future()
        self._enqueue(("admit", repr(float(tokens))), done)
        _, _, admission, self._reserved_key = await done
        return admission

    def refund(self, tokens: float) -> None:
        self._enqueue(("refund", repr(float(tokens))), key=self._reserved_key)

    def set_limit(self, kind: Kind, limit: Limit) -> None:
        snapshot = self._snapshot
        self._snapshot = Snapshot(limit if kind == "requests" else snapshot.requests,
                                  limit if kind == "tokens" else snapshot.tokens, snapshot.factor)
        if self._levels[kind] is None:
            self._levels[kind] = limit.capacity
        self._enqueue(("set_limit", _KINDS[kind], repr(limit.per_minute), limit.source,
                       repr(limit.capacity)))

    def lower(self, kind: Kind, level: float) -> None:
        if math.isfinite(level):
            current = self._levels[kind]
            if current is not None:
                self._levels[kind] = min(current, level)
            self._enqueue(("lower", _KINDS[kind], repr(float(level))))

    def set_level(self, kind: Kind, level: float) -> None:
        if math.isfinite(level):
            self._enqueue(("set_level", _KINDS[kind], repr(float(level))))

    def hold(self, until: float) -> None:
        duration = until - self._now()
        if duration > 0 and math.isfinite(duration):
            self._enqueue(("hold", repr(duration)))

    def set_factor(self, factor: float) -> None:
        snapshot = self._snapshot
        self._snapshot = Snapshot(snapshot.requests, snapshot.tokens, factor)
        self._enqueue(("set_factor", repr(float(factor))))

    def rename(self, model: str) -> None:
        """Keep this budget under `model`'s name from now on (`BudgetState.rename`). The
        old budget says where it went (processes still on it follow with their next call) and
        this process leaves its queue; what this process knows (limits, factor, and its levels,
        so the move opens no fresh burst) is written under the new name: a user's limit does not
        override a server's another process wrote there, and a budget already there keeps its
        level if lower."""
        if model == self.model:
            return
        old = self.key
        self._enqueue(("move", model), key=old)
        self._enqueue(("leave",), key=old)
        self.model = model
        self.key = self._budgets.key(self.base_url, model)
        levels = {kind: self.level(kind) for kind in ("requests", "tokens")}
        for call in self._restoring():
            self._enqueue(call.args)
        for kind, level in levels.items():
            if level is not None:
                self._enqueue(("lower", _KINDS[kind], repr(float(level))))

    def level(self, kind: Kind) -> float | None:
        """`kind`'s level as of the last round trip, refilled locally since (for display)."""
        level, limit = self._levels[kind], self._snapshot.limit(kind)
        if level is None or limit is None:
            return None
        return min(limit.capacity, level + limit.rate * max(0.0, self._now() - self._levels_at))

    async def refresh(self) -> None:
        """Read the shared state now (a process joining learns what the others learned)."""
        done = asyncio.get_running_loop().create_future()
        self._enqueue(("read",), done)
        await done

    # -- the flusher ---------------------------------------------------------------------------

    def _enqueue(self, args: tuple[str, ...], done: asyncio.Future | None = None, *,
                 key: str | None = None) -> None:
        if self._lost is not None:
            if done is not None:
                done.set_exception(self._lost)
            return
        self._queue.append(_Call(args, done, key))
        if self._flusher is None or self._flusher.done():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # before the loop runs (a limiter built early): the next admission sends it
            self._flusher = loop.create_task(self._flush())

    async def _flush(self) -> None:
        while self._queue:
            calls, self._queue = self._queue, []
            try:
                replies = await self._send(calls)
            except Exception as exc:  # RedisLost; anything else is a bug, surfaced to the waiters
                if isinstance(exc, RedisLost):
                    self._lost = exc
                for call in calls + self._queue:
                    if call.done is not None and not call.done.done():
                        call.done.set_exception(exc)
                self._queue = []
                return
            self.round_trips += 1
            for call, reply in zip(calls, replies):
                if call.done is not None and not call.done.done():  # with the budget it was for
                    call.done.set_result((*_decode(reply), call.key or self.key))
            moved = _moved(replies[-1])
            if (moved is not None and moved != self.model and calls[-1].key is None
                    and self.follow_moves):
                self.rename(moved)  # another process found this budget to be the key's
            elif not self._queue and calls[-1].key is None:  # (else: another budget's state,
                self._take_copy(_decode(replies[-1]))       # or queued writes make it stale)

    def _take_copy(self, decoded: tuple[Snapshot, dict[str, float | None], Admission]) -> None:
        """The state a round trip brought back becomes the local copy. A limit (or factor) this
        process knows that the budget in Redis lacks is written back: Redis lost it (restarted
        empty, or the budget went unused past its TTL), and a budget without limits admits all."""
        snapshot, levels, _ = decoded
        known = self._snapshot
        lost = [(kind, limit) for kind, limit in (("requests", known.requests),
                                                  ("tokens", known.tokens))
                if limit is not None and snapshot.limit(kind) is None]
        for kind, limit in lost:
            self._enqueue(("set_limit", _KINDS[kind], repr(limit.per_minute), limit.source,
                           repr(limit.capacity)))
        if lost and known.factor != 1.0 and snapshot.factor == 1.0:
            self._enqueue(("set_factor", repr(float(known.factor))))
        if lost:
            return  # the copy stays as it was until those writes come back
        self._snapshot, self._levels = snapshot, levels
        self._levels_at = self._now()

    async def _send(self, calls: list[_Call]) -> list:
        """Every call in one pipeline, in order; retried with backoff while Redis is unreachable,
        up to the timeout (then `RedisLost`). A Redis that lost the script gets it again; one that
        lost the salt gets it again (`RedisBudgets.resalt`) and, before anything else, the
        limits this process knows of the budget. Calls the server already ran are not sent again
        (a pipeline is not a transaction: a salt set again midway fails only its tail)."""
        from redis.exceptions import NoScriptError, RedisError, ResponseError  # noqa: PLC0415

        delay, deadline = RETRY_FIRST_S, None
        replies: list = [None] * len(calls)
        pending = list(range(len(calls)))
        need_script = need_salt = False
        while True:
            try:
                if need_script:
                    await self._client.script_load(_SCRIPT)
                    need_script = False
                if need_salt:
                    await self._budgets.resalt()
                    need_salt = False
                generation = self._budgets.salt_generation
                restore = self._restoring() if self._salt_seen != generation else []  # Redis was emptied
                results = await self._pipeline(restore + [calls[i] for i in pending])
            except (RedisError, OSError) as exc:
                if isinstance(exc, ResponseError):
                    raise  # not an outage: a bug
                now = self._now()
                deadline = deadline if deadline is not None else now + self._timeout_s
                if now >= deadline:
                    raise RedisLost(f"Redis at {redact_url(self._url)} unreachable for "
                                    f"{self._timeout_s:g} s: stopping") from None
                await self._sleep(min(delay, max(0.0, deadline - now)))
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            failed = [e for e in results if isinstance(e, Exception)]
            if not any(isinstance(e, Exception) for e in results[:len(restore)]):
                self._salt_seen = generation
            still = []
            for i, result in zip(pending, results[len(restore):]):
                if isinstance(result, Exception):
                    still.append(i)
                else:
                    replies[i] = result
            pending = still
            if not failed:
                return replies
            error = failed[0]
            if isinstance(error, NoScriptError):
                need_script = True
            elif isinstance(error, ResponseError) and "RUNNER_SALT" in str(error):
                need_salt = True
            else:
                raise error  # the script itself failed: a bug, not an outage

    def _restoring(self) -> list[_Call]:
        """The calls that put back what this process knew of a budget Redis lost: its limits and
        its factor (its levels start full, as on a fresh start)."""
        snapshot, calls = self._snapshot, []
        for kind, limit in (("requests", snapshot.requests), ("tokens", snapshot.tokens)):
            if limit is not None:
                calls.append(_Call(("set_limit", _KINDS[kind], repr(limit.per_minute),
                                    limit.source, repr(limit.capacity)), None))
        if snapshot.factor != 1.0:
            calls.append(_Call(("set_factor", repr(float(snapshot.factor))), None))
        return calls

    async def _pipeline(self, calls: list[_Call]) -> list:
        """The calls in one pipeline; each one's reply, or the error it met."""
        ttl_ms = str(int(STATE_TTL_S * 1000))
        salt_tag = self._budgets.salt_tag
        async with self._client.pipeline(transaction=False) as pipe:
            for call in calls:
                pipe.evalsha(_SHA, 2, call.key or self.key, SALT_KEY, call.args[0], ttl_ms,
                             salt_tag, self._waiter, *call.args[1:])
            return await pipe.execute(raise_on_error=False)

    async def flush(self) -> None:
        """Return once everything queued so far is in Redis (or Redis is lost)."""
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)

    def leave(self) -> None:
        """Give up this process's place in the budget's queue (it is done with the budget)."""
        self._enqueue(("leave",))

    def cancel(self) -> None:
        """Stop the flusher, dropping what it had not sent."""
        if self._flusher is not None:
            self._flusher.cancel()
        self._queue = []

    def __repr__(self) -> str:
        return f"RedisBudgetState({self.key!r}, {self._snapshot!r})"


class RedisBudgets:
    """The connection to one Redis and the budgets in it of one API key: `state(base_url, model)`
    builds each budget's `RedisBudgetState`. `connect` first (raises `RedisUnavailable`)."""

    def __init__(self, url: str, api_key: str, *, timeout_s: float = DEFAULT_REDIS_TIMEOUT_S
                 ) -> None:
        self.url = url
        self._api_key = api_key
        self._timeout_s = timeout_s
        import redis.asyncio as aioredis  # noqa: PLC0415 (see TYPE_CHECKING above)

        self.client = aioredis.Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT_S,
                                              socket_timeout=CONNECT_TIMEOUT_S)
        self._salt: bytes | None = None
        self.salt_tag = ""  # the salt's SHA-1, which the script checks (budget.lua)
        self.salt_generation = 0  # bumped each time the salt is set (see RedisBudgetState._send)
        self.states: list[RedisBudgetState] = []

    async def connect(self) -> None:
        """Reach the Redis, load the script and read (or set, once) the salt."""
        from redis.exceptions import RedisError  # noqa: PLC0415

        try:
            await self.client.script_load(_SCRIPT)
            await self._set_salt(secrets.token_bytes(32))
        except (RedisError, OSError) as exc:
            raise RedisUnavailable(f"cannot reach Redis at {redact_url(self.url)}: "
                                   f"{type(exc).__name__}") from None

    async def _set_salt(self, salt: bytes) -> None:
        """Store `salt` unless Redis has one; use whichever Redis then has."""
        stored = None
        while stored is None:  # (gone again between the two calls: set it again)
            await self.client.set(SALT_KEY, salt, nx=True)
            stored = await self.client.get(SALT_KEY)
        if stored != self._salt:
            self._salt = stored
            self.salt_tag = hashlib.sha1(stored).hexdigest()
            for state in self.states:  # the budgets' names follow the salt
                state.key = self.key(state.base_url, state.model)
        self.salt_generation += 1  # every budget of this process writes back what it knows

    async def resalt(self) -> None:
        """Redis lost the salt (restarted without persistence, flushed): set ours again, or adopt
        the one another process set first (so every process keeps naming budgets alike)."""
        await self._set_salt(self._salt or secrets.token_bytes(32))

    def key(self, base_url: str, model: str) -> str:
        """The Redis key of the budget of (this key, `base_url`, `model`)."""
        if self._salt is None:
            raise RuntimeError("RedisBudgets.connect() first")
        return KEY_PREFIX + fingerprint(self._salt, self._api_key, base_url, model)

    def state(self, base_url: str, model: str, *, clock: Callable[[], float] | None = None,
              follow_moves: bool = True) -> RedisBudgetState:
        """The shared state of the budget of (this key, `base_url`, `model`); `follow_moves`:
        to the key's one budget when another process finds the model's to be it (for
        ``--budget-scope auto``; ``model`` says the budgets are the models' own)."""
        state = RedisBudgetState(self, base_url, model, follow_moves=follow_moves,
                                 timeout_s=self._timeout_s, clock=clock)
        self.states.append(state)
        return state

    async def close(self) -> None:
        """Send what is queued, waiting at most `CLOSE_WAIT_S` (a run ending while Redis is away
        does not wait out the timeout: what it had not sent only ages out of the budget)."""
        for state in self.states:
            state.leave()
        flushes = [asyncio.ensure_future(state.flush()) for state in self.states]
        if flushes:
            await asyncio.wait(flushes, timeout=CLOSE_WAIT_S)
        for state in self.states:
            state.cancel()
        await asyncio.gather(*flushes, return_exceptions=True)
        await self.client.aclose()
