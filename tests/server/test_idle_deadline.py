"""``IdleDeadline``: a session's idle limit that moves without a timer per message."""

from __future__ import annotations

import asyncio

from dsm.server.ws_io import IdleDeadline


def test_expires_once_when_not_touched() -> None:
    async def main() -> int:
        fired: list[float] = []
        loop = asyncio.get_running_loop()
        deadline = IdleDeadline(0.05, lambda: fired.append(loop.time()))
        await asyncio.sleep(0.3)
        assert deadline.expired
        deadline.touch()  # after expiry: nothing re-arms
        await asyncio.sleep(0.1)
        return len(fired)

    assert asyncio.run(main()) == 1


def test_touch_moves_the_deadline_and_pause_stops_it() -> None:
    async def main() -> tuple[bool, bool, bool]:
        fired: list[bool] = []
        deadline = IdleDeadline(0.5, lambda: fired.append(True))
        for _ in range(6):  # 0.3 s of activity, each touch well inside the limit
            await asyncio.sleep(0.05)
            deadline.touch()
        alive_while_touched = not fired
        deadline.pause()
        await asyncio.sleep(0.8)  # paused: longer than the limit, no expiry
        alive_while_paused = not fired
        deadline.touch()
        await asyncio.sleep(1.2)
        deadline.cancel()
        return alive_while_touched, alive_while_paused, bool(fired)

    assert asyncio.run(main()) == (True, True, True)


def test_cancel_prevents_expiry() -> None:
    async def main() -> bool:
        fired: list[bool] = []
        deadline = IdleDeadline(0.05, lambda: fired.append(True))
        deadline.cancel()
        await asyncio.sleep(0.2)
        return bool(fired)

    assert asyncio.run(main()) is False
