"""A lane's learned capabilities: one pack at a time until packs work, off after failed packs, n."""
import asyncio

import pytest

from runner.clock import run_virtual
from runner.live.capabilities import (
    N_IGNORED_TO_CONFIRM, PACK_FAILURES_TO_STOP, LaneCapabilities, PackState, refuses_lists,
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


def test_n_is_confirmed_by_a_second_request_never_by_one_answer_however_many_prompts():
    caps = LaneCapabilities()
    assert caps.note_n_ignored("first") is False and not caps.ignores_n
    assert caps.note_n_ignored("second") is True and caps.n_message == "second"
    assert N_IGNORED_TO_CONFIRM == 2


def test_a_lane_that_answered_n_in_full_never_concludes_it_ignores_n():
    caps = LaneCapabilities()
    caps.n_answered()
    assert not any(caps.note_n_ignored(f"short {i}") for i in range(5)) and not caps.ignores_n
    later = LaneCapabilities()
    later.note_n_ignored("a")
    later.note_n_ignored("b")
    assert later.ignores_n and later.n_answered() is True and not later.ignores_n  # undone


@pytest.mark.parametrize("code, message, refuses", [
    ("list_not_taken", "only the first prompt's 2 choice(s) came back", True),
    ("server_error", "HTTP 500", True),              # a blank 500: a server failing on lists
    ("server_error", "The server had an error", False),
    ("bad_response", "answer lacks 1 of 32 choices", False),
    ("bad_response", "malformed or truncated JSON", False),
    ("connection_error", "reset by peer", False),
])
def test_only_the_shapes_of_a_list_not_taken_count_against_packing(code, message, refuses):
    assert refuses_lists(code, message) is refuses


def test_a_forced_lane_takes_packs_from_the_start_and_never_turns_them_off():
    caps = LaneCapabilities(trusted=True)
    assert caps.packs is PackState.TRUSTED
    assert not any(caps.pack_failed() for _ in range(5)) and caps.packs is PackState.TRUSTED
