"""The keyed work queue: no key twice at once, nothing lost, backoff per key."""

import asyncio
from collections.abc import Callable

import pytest

from sidecarless.workqueue import Backoff, Requeue, WorkQueue


async def wait_for(condition: Callable[[], object], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 - polls plain state the queue exposes, not an event
            await asyncio.sleep(0.01)


async def test_duplicate_adds_are_handled_once() -> None:
    seen: list[str] = []
    gate = asyncio.Event()

    async def handle(key: str) -> None:
        await gate.wait()
        seen.append(key)

    queue: WorkQueue[str] = WorkQueue("t-dup", handle, workers=2)
    for _ in range(5):
        queue.add("a")
    queue.start()
    gate.set()
    await wait_for(lambda: queue.idle and seen)
    await queue.stop()
    assert seen == ["a"]


async def test_a_key_added_while_running_runs_again_afterwards() -> None:
    running = asyncio.Event()
    release = asyncio.Event()
    runs = 0
    concurrent = 0
    most_concurrent = 0

    async def handle(_: str) -> None:
        nonlocal runs, concurrent, most_concurrent
        concurrent += 1
        most_concurrent = max(most_concurrent, concurrent)
        runs += 1
        running.set()
        await release.wait()
        concurrent -= 1

    queue: WorkQueue[str] = WorkQueue("t-dirty", handle, workers=4)
    queue.start()
    queue.add("k")
    await running.wait()
    queue.add("k")
    queue.add("k")
    release.set()
    await wait_for(lambda: runs == 2 and queue.idle)
    await queue.stop()
    assert most_concurrent == 1


async def test_failures_back_off_and_success_forgets() -> None:
    attempts: list[float] = []
    loop = asyncio.get_running_loop()

    async def handle(_: str) -> None:
        attempts.append(loop.time())
        if len(attempts) < 3:
            raise RuntimeError("driver down")

    queue: WorkQueue[str] = WorkQueue(
        "t-backoff", handle, workers=1, backoff=Backoff(initial=0.05, maximum=1, jitter=0)
    )
    queue.start()
    queue.add("k")
    await wait_for(lambda: len(attempts) == 3)
    await wait_for(lambda: queue.idle)
    await queue.stop()
    first_gap, second_gap = attempts[1] - attempts[0], attempts[2] - attempts[1]
    assert first_gap == pytest.approx(0.05, abs=0.04)
    assert second_gap == pytest.approx(0.10, abs=0.05)
    assert queue.failures("k") == 0


async def test_requeue_with_a_delay_does_not_count_as_failure() -> None:
    attempts = 0

    async def handle(_: str) -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise Requeue(0.01, "later")

    queue: WorkQueue[str] = WorkQueue("t-requeue", handle, workers=1)
    queue.start()
    queue.add("k")
    await wait_for(lambda: attempts == 2)
    await queue.stop()


def test_backoff_is_capped_and_jittered() -> None:
    backoff = Backoff(initial=1, maximum=300, jitter=0.1)
    assert backoff.delay(1) == pytest.approx(1, rel=0.11)
    assert backoff.delay(4) == pytest.approx(8, rel=0.11)
    assert backoff.delay(30) <= 330


async def test_each_key_backs_off_on_its_endpoints_schedule() -> None:
    attempts: dict[str, list[float]] = {"slow/k": [], "other/k": []}
    loop = asyncio.get_running_loop()
    slow = Backoff(initial=0.2, maximum=1, jitter=0)

    async def handle(key: str) -> None:
        attempts[key].append(loop.time())
        if len(attempts[key]) == 1:
            raise Requeue(reason="endpoint says wait")

    def backoff_of(key: str) -> Backoff | None:
        return slow if key.startswith("slow/") else None  # None: the queue's own

    queue: WorkQueue[str] = WorkQueue(
        "t-own-backoff", handle, workers=1, backoff=Backoff(initial=0.01, jitter=0), backoff_of=backoff_of
    )
    queue.start()
    queue.add("slow/k")
    queue.add("other/k")
    await wait_for(lambda: all(len(times) == 2 for times in attempts.values()))
    await queue.stop()
    assert attempts["slow/k"][1] - attempts["slow/k"][0] == pytest.approx(0.2, abs=0.08)
    assert attempts["other/k"][1] - attempts["other/k"][0] < 0.1


def test_a_quiet_add_leaves_a_pending_retry_alone_and_a_loud_one_cuts_it_short() -> None:
    from tests.unit.fakeworld import simulate  # noqa: PLC0415 - simulated time for this test only

    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        runs: list[float] = []

        async def handle(_: str) -> None:
            runs.append(loop.time())
            raise RuntimeError("driver down")

        queue: WorkQueue[str] = WorkQueue("t-quiet", handle, workers=1, backoff=Backoff(initial=10, jitter=0))
        queue.start()
        queue.add("k")
        await asyncio.sleep(1)
        queue.add("k", quiet=True)  # e.g. the watch event of the failure's own status write
        await asyncio.sleep(1)
        assert runs == [0.0]
        await asyncio.sleep(9)  # the retry, 10 s after the failure
        assert len(runs) == 2
        queue.add("k")  # a real change (the spec): at once
        await asyncio.sleep(0.1)
        await queue.stop()
        return runs

    runs = simulate(main)
    assert len(runs) == 3
    assert runs[1:] == [pytest.approx(10.0), pytest.approx(11.0)]  # the retry, then the loud add at once


def test_a_quiet_add_during_a_failing_run_waits_for_the_retry_but_after_success_runs_again() -> None:
    from tests.unit.fakeworld import simulate  # noqa: PLC0415

    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        runs: list[float] = []
        queue: WorkQueue[str]

        async def handle(key: str) -> None:
            runs.append(loop.time())
            if len(runs) <= 2:
                queue.add(key, quiet=True)  # its own write's echo, while it still runs
            await asyncio.sleep(0)
            if len(runs) == 1:
                raise RuntimeError("driver down")

        queue = WorkQueue("t-quiet-active", handle, workers=1, backoff=Backoff(initial=10, jitter=0))
        queue.start()
        queue.add("k")
        await asyncio.sleep(5)
        assert runs == [0.0]  # not again at once after the failure
        await asyncio.sleep(6)
        await queue.stop()
        return runs

    runs = simulate(main)
    # The retry at 10 s succeeds; the echo during it runs the key once more (nothing is lost).
    assert runs[1] == pytest.approx(10.0)
    assert len(runs) == 3


def test_backoff_never_overflows() -> None:
    # 2 ** 1024 is past any float: a key failing for days must still get the maximum.
    for failures in (64, 1_025, 10**6):
        assert Backoff(initial=0.5, maximum=300.0, jitter=0).delay(failures) == 300


class BrokenBackoff(Backoff):
    def delay(self, failures: int) -> float:
        raise OverflowError("the queue's own bookkeeping failed")


async def test_a_worker_survives_its_handlers_and_its_own_failures() -> None:
    handled: list[str] = []

    async def handle(key: str) -> None:
        handled.append(key)
        if key == "cancelled":
            raise asyncio.CancelledError  # from something the handler awaited, not the worker's own
        if key == "broken-retry":
            raise Requeue(reason="with a backoff that fails")
        if key == "error":
            raise RuntimeError("handler bug")

    def backoff_of(key: str) -> Backoff | None:
        return BrokenBackoff() if key == "broken-retry" else None

    queue: WorkQueue[str] = WorkQueue("t-survive", handle, workers=1, backoff_of=backoff_of)
    queue.start()
    for key in ("cancelled", "broken-retry", "error", "after"):
        queue.add(key)
    await wait_for(lambda: "after" in handled)
    assert handled == ["cancelled", "broken-retry", "error", "after"]
    assert all(not task.done() for task in queue._tasks)
    await queue.stop()
