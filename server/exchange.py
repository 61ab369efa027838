"""One round trip over Flower's Grid: push the messages, poll for the replies.

Flower's own ``Grid.send_and_receive`` sleeps a fixed interval between polls
(0.1 s in simulation, 3 s against a SuperLink), which adds up to that much to
every round whatever the clients' speed. Here the first polls come after 1 ms
and the interval grows by half each time up to ``max_interval``
(``server.poll_interval``), so a short round ends within a few milliseconds of
its last reply and a long one costs a poll every ``max_interval``. Same
contract as Flower's: the replies that arrived within ``timeout`` seconds.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message
from flwr.serverapp import Grid

FIRST_INTERVAL = 0.001
GROWTH = 1.5


def send_and_receive(
    grid: Grid, messages: Iterable[Message], timeout: float, max_interval: float
) -> list[Message]:
    """Push ``messages`` and return the replies received before ``timeout`` seconds pass."""
    pending = set(grid.push_messages(messages))
    deadline = time.monotonic() + timeout
    interval = FIRST_INTERVAL
    replies: list[Message] = []
    while pending:
        arrived = list(grid.pull_messages(pending))
        replies.extend(arrived)
        pending.difference_update(m.metadata.reply_to_message_id for m in arrived)
        remaining = deadline - time.monotonic()
        if not pending or remaining <= 0:
            break
        time.sleep(min(interval, remaining))
        interval = min(interval * GROWTH, max_interval)
    return replies
