"""A lane's learned capabilities: one pack at a time until packs work, off after failed packs, n."""
import asyncio

import pytest

from runner.clock import run_virtual
from runner.live.capabilities import (
    N_IGNORED_TO_CONFIRM, PACK_FAILURES_TO_STOP, LaneCapabilities, PackState,
)


def test_an_unproven_lane_sends_one_pack_at_a_time_in_arrival_order():
    async def main():
        caps, order = LaneCapabilities(), []

        async def pack(name, hold):
            assert await caps.claim_pack(name)
            order.append(name)
            await asyncio.sleep(hold)
            caps.release_pack(name)

        await asyncio.gather(pack("a", 1.0), pack("b", 1.0), pack("c", 1.0))
        return order, asyncio.get_running_loop().time()

    order, elapsed = run_virtual(main())
    assert order == ["a", "b", "c"] and elapsed == pytest.approx(3.0)


def test_a_trusted_lane_lets_every_waiting_pack_go_at_once():
    async def main():
        caps = LaneCapabilities()
        assert await caps.claim_pack("probe")
        waiting = [asyncio.ensure_future(caps.claim_pack(i)) for i in range(3)]
        await asyncio.sleep(0)
        assert not any(w.done() for w in waiting)
        caps.pack_answered()
        caps.release_pack("probe")
        return await asyncio.gather(*waiting), caps.packs

    granted, state = run_virtual(main())
    assert granted == [True, True, True] and state is PackState.TRUSTED


def test_failed_packs_turn_packing_off_and_waiting_packs_go_alone():
    async def main():
        caps = LaneCapabilities()
        assert await caps.claim_pack("first")
        waiting = asyncio.ensure_future(caps.claim_pack("second"))
        turned_off = [caps.pack_failed() for _ in range(PACK_FAILURES_TO_STOP)]
        return turned_off, await waiting, caps.packs

    turned_off, granted, state = run_virtual(main())
    assert turned_off == [False] * (PACK_FAILURES_TO_STOP - 1) + [True]
    assert granted is False and state is PackState.OFF


def test_failures_on_a_trusted_lane_change_nothing():
    caps = LaneCapabilities()
    caps.pack_answered()
    assert not any(caps.pack_failed() for _ in range(10)) and caps.packs is PackState.TRUSTED


def test_a_probe_cancelled_on_the_wire_frees_the_lane():
    async def main():
        caps = LaneCapabilities()

        async def probe():
            await caps.claim_pack("probe")
            await asyncio.sleep(100)

        task = asyncio.ensure_future(probe())
        await asyncio.sleep(1)
        task.cancel()
        return await asyncio.wait_for(caps.claim_pack("next"), 5)

    assert run_virtual(main()) is True


def test_n_is_confirmed_by_a_second_prompt_or_a_pack_of_two():
    single = LaneCapabilities()
    assert single.note_n_ignored(1, "first") is False and not single.ignores_n
    assert single.note_n_ignored(1, "second") is True and single.n_message == "second"
    pack = LaneCapabilities()
    assert pack.note_n_ignored(N_IGNORED_TO_CONFIRM, "a pack") is True and pack.ignores_n
