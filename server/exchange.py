"""One round trip over Flower's Grid: push the messages, poll for the replies.

Flower's own ``Grid.send_and_receive`` sleeps a fixed interval between polls
(0.1 s in simulation, 3 s against a SuperLink), which adds up to that much to
every round whatever the clients' speed. Here the first polls come after 1 ms
and the interval grows by half each time up to ``max_interval``
(``server.poll_interval``), so a short round ends within a few milliseconds of
its last reply and a long one costs a poll every ``max_interval``. Same
contract as Flower's: the replies that arrived within ``timeout`` seconds.

In a simulation the engine runs in the server's own process and counts every reply it
stores (``REPLIES``, counted by ``simulations/vce_patches.py``): the exchange then sleeps
until as many replies as it still waits for have been stored and pulls once, right after
the last one, instead of polling (up to ``max_interval`` late, and a pull each time). A
reply stored some other way (the SuperLink's own answer for a lost node) is still found
by a poll every ``max_interval``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable, Iterator

from flwr.app import Message
from flwr.serverapp import Grid

FIRST_INTERVAL = 0.001
GROWTH = 1.5


class Arrivals:
    """A count of replies stored, which a waiting exchange sleeps on. ``counting`` is set
    by whoever calls ``add`` for every stored reply (the simulation engine's patch).

    A waiter is woken once, when the count reaches what it waits for, not at every
    ``add``: an exchange waiting for a round's 20 replies wakes after the 20th, instead
    of taking the interpreter's lock 20 times while the engine's threads need it. Inside
    ``held()`` (a burst of adds, such as a round's pushes) nobody is woken until the
    burst ends."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.count = 0
        self.counting = False
        self.waiting: list[int] = []  # the counts the waiters wait for
        self.holds = 0

    def _due(self) -> bool:
        return not self.holds and any(self.count >= target for target in self.waiting)

    def add(self) -> None:
        with self.cond:
            self.count += 1
            if self._due():
                self.cond.notify_all()

    def wait(self, seen: int, expected: int, timeout: float) -> None:
        """Until ``expected`` replies have been stored since the count was ``seen``, at
        most ``timeout`` seconds."""
        with self.cond:
            target = seen + expected
            self.waiting.append(target)
            try:
                self.cond.wait_for(lambda: self.count >= target and not self.holds, timeout)
            finally:
                self.waiting.remove(target)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Adds inside count at once and wake the waiters they complete as the block ends."""
        with self.cond:
            self.holds += 1
        try:
            yield
        finally:
            with self.cond:
                self.holds -= 1
                if self._due():
                    self.cond.notify_all()


REPLIES = Arrivals()  # the process's own engine, when it counts (simulation)


def send_and_receive(
    grid: Grid, messages: Iterable[Message], timeout: float, max_interval: float
) -> list[Message]:
    """Push ``messages`` and return the replies received before ``timeout`` seconds pass."""
    pending = set(grid.push_messages(messages))
    deadline = time.monotonic() + timeout
    interval = FIRST_INTERVAL
    replies: list[Message] = []
    while pending:
        # replies stored from here on count: one stored before the pull is pulled now,
        # so the wait below may end early (another pull), never late
        seen = REPLIES.count
        arrived = list(grid.pull_messages(pending))
        replies.extend(arrived)
        pending.difference_update(m.metadata.reply_to_message_id for m in arrived)
        remaining = deadline - time.monotonic()
        if not pending or remaining <= 0:
            break
        if REPLIES.counting:
            REPLIES.wait(seen, len(pending), min(max_interval, remaining))
            continue
        time.sleep(min(interval, remaining))
        interval = min(interval * GROWTH, max_interval)
    return replies
