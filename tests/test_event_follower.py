"""EventFollower: record's event stream read on an asyncio loop from the socket's descriptor (the plc's way)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import zmq

from linewatch.wire.channels import EventFollower


class Recorder:
    """A handler that notes each message's number; it raises at `fail_at`, as a handler's bug would."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.seen: list[int] = []
        self.probed = False
        self.fail_at = fail_at

    def __call__(self, parts: list[bytes]) -> None:
        if parts[0] == b"probe":
            self.probed = True
            return
        n = int(parts[1])
        if n == self.fail_at:
            raise RuntimeError(f"handler broke at {n}")
        self.seen.append(n)


async def _publish_to_follower(tmp_path: Path, handler: Recorder, messages: int) -> tuple[asyncio.Task[None],
                                                                                             EventFollower]:
    """A follower on a real PUB socket, and `messages` numbered messages sent to it at once."""
    endpoint = f"ipc://{tmp_path / 'events.ipc'}"
    pub: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    pub.bind(endpoint)
    follower = EventFollower(endpoint, handler)
    task = follower.follow()
    try:
        for _ in range(300):  # until the subscription has reached the publisher
            pub.send_multipart([b"probe", b""])
            await asyncio.sleep(0.01)
            if handler.probed:
                break
        assert handler.probed, "the follower never received a probe"
        for i in range(messages):
            pub.send_multipart([b"verdicts", str(i).encode()])
        for _ in range(1000):
            await asyncio.sleep(0.01)
            if task.done() or len(handler.seen) == messages:
                break
    finally:
        pub.close(linger=0)
    return task, follower


def test_every_message_of_a_burst_longer_than_one_wakeup_is_handled_in_order(tmp_path: Path) -> None:
    """More messages than one wake-up handles (BURST): the rest are handled on the next turns, none lost."""
    n = EventFollower.BURST * 3 + 7

    async def main() -> list[int]:
        rec = Recorder()
        task, follower = await _publish_to_follower(tmp_path, rec, n)
        assert not task.done()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        follower.close()
        return rec.seen

    assert asyncio.run(main()) == list(range(n))


def test_a_handler_that_breaks_ends_the_task_with_its_error(tmp_path: Path) -> None:
    """The plc exits (and is restarted) rather than serve registers that a broken handler stopped updating."""

    async def main() -> list[int]:
        rec = Recorder(fail_at=5)
        task, follower = await _publish_to_follower(tmp_path, rec, 10)
        assert task.done()
        with pytest.raises(RuntimeError, match="handler broke at 5"):
            task.result()
        follower.close()
        return rec.seen

    assert asyncio.run(main()) == [0, 1, 2, 3, 4]
