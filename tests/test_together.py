"""``together``: gather's results, and on a failure no sibling left running."""

from __future__ import annotations

import asyncio

import pytest

from swarmstore._together import together


async def test_results_come_back_in_the_order_given():
    async def after(n: int) -> int:
        for _ in range(n):
            await asyncio.sleep(0)
        return n

    assert await together(after(3), after(0), after(1)) == [3, 0, 1]
    assert await together() == []
    assert await together(after(2)) == [2]


async def test_a_failure_cancels_and_awaits_the_others_and_is_raised_as_itself():
    ended: list[str] = []
    started = asyncio.Event()

    async def slow() -> None:
        started.set()
        try:
            await asyncio.Event().wait()  # never set: only a cancel ends it
        finally:
            ended.append("slow")

    async def fails() -> None:
        await started.wait()
        raise KeyError("k")

    with pytest.raises(KeyError, match="k"):
        await together(slow(), fails())
    # by the time the error reaches the caller the sibling has run its cleanup
    assert ended == ["slow"]
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []


async def test_gather_would_have_left_the_sibling_running():
    """The defect ``together`` exists for, shown on gather itself (so the test above means
    something): after gather raised, the slow sibling is still pending."""
    release = asyncio.Event()

    async def slow() -> None:
        await release.wait()

    async def fails() -> None:
        raise KeyError("k")

    with pytest.raises(KeyError):
        await asyncio.gather(slow(), fails())
    pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert len(pending) == 1
    release.set()
    await asyncio.gather(*pending)


async def test_a_cancel_of_the_caller_cancels_every_member():
    ended: list[int] = []
    started = asyncio.Event()

    async def member(i: int) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            ended.append(i)

    task = asyncio.create_task(together(member(0), member(1)))
    await started.wait()
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sorted(ended) == [0, 1]
