"""The terminal: one rich console for log lines and the progress bar, start-up phases, ETA.

Every console log line goes through :data:`CONSOLE` (``ConsoleHandler``), so rich
prints it above a live progress bar instead of onto it. ``phase`` logs one
status line per start-up phase with the seconds since the launcher started.
``RoundClock`` estimates the time left from the rounds after the first one,
whose duration includes the workers' start-up.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from rich.console import Console
from rich.progress import ProgressColumn, Task
from rich.text import Text

CONSOLE = Console()  # stdout, as Hydra's console handler
_START = [time.perf_counter()]
log = logging.getLogger("fedkd")


def mark_start() -> None:
    """The launcher's start: ``phase`` lines count seconds from here."""
    _START[0] = time.perf_counter()


def elapsed() -> float:
    return time.perf_counter() - _START[0]


phase_log = logging.getLogger("fedkd.phase")


def phase(name: str, detail: str) -> None:
    """One status line of a start-up phase, e.g. ``[  3.2 s] data: ...``."""
    phase_log.info("[%5.1f s] %s: %s", elapsed(), name, detail)


class ConsoleHandler(logging.Handler):
    """Prints records through :data:`CONSOLE` (above any live progress bar), as plain text."""

    def __init__(self, console: Console | None = None, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.console = console or CONSOLE

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            self.console.print(Text(text), soft_wrap=True, highlight=False)
        except Exception:  # a log line must never stop the run
            self.handleError(record)


def route_through_console(logger: logging.Logger, console: Console | None = None) -> None:
    """Replace ``logger``'s terminal handlers (not files) by ``ConsoleHandler``s that keep
    their level, formatter and filters."""
    for handler in list(logger.handlers):
        if isinstance(handler, (logging.FileHandler, ConsoleHandler)) or not isinstance(
            handler, logging.StreamHandler
        ):
            continue
        replacement = ConsoleHandler(console, handler.level)
        replacement.setFormatter(handler.formatter)
        for flt in handler.filters:
            replacement.addFilter(flt)
        logger.removeHandler(handler)
        logger.addHandler(replacement)


def file_handlers() -> list[logging.FileHandler]:
    """The root logger's file handlers (Hydra's ``run.log``)."""
    return [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]


def log_to_files(message: str, level: int = logging.ERROR) -> None:
    """Write ``message`` to the run's log files only (the console shows it otherwise)."""
    record = log.makeRecord(log.name, level, __file__, 0, message, None, None)
    for handler in file_handlers():
        handler.handle(record)
        handler.flush()


def clock(seconds: float | None) -> str:
    """``h:mm:ss``, or ``-:--:--`` when unknown."""
    if seconds is None:
        return "-:--:--"
    seconds = int(round(max(seconds, 0.0)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class RoundClock:
    """Time left from the pace of the rounds after the first completed one.

    The first round's duration includes Ray's and the workers' start-up (or a
    resumed run's restore), so it only marks where the measurement starts: no
    estimate exists until a second round has completed.
    """

    def __init__(self, total: int, now: Any = time.perf_counter) -> None:
        self.total = total
        self._now = now
        self._first: tuple[int, float] | None = None
        self._last: tuple[int, float] | None = None

    @property
    def started(self) -> bool:
        """Whether a round has completed."""
        return self._first is not None

    def record(self, completed: int) -> None:
        """``completed`` rounds are done now."""
        now = self._now()
        if self._first is None:
            self._first = (completed, now)
        elif completed > self._first[0] and (self._last is None or completed > self._last[0]):
            self._last = (completed, now)

    def seconds_per_round(self) -> float | None:
        if self._first is None or self._last is None:
            return None
        return (self._last[1] - self._first[1]) / (self._last[0] - self._first[0])

    def remaining(self) -> float | None:
        """Seconds left, or None before two rounds have completed."""
        rate = self.seconds_per_round()
        if rate is None or self._last is None:
            return None
        left = max(self.total - self._last[0], 0)
        return max(rate * left - (self._now() - self._last[1]), 0.0)


class EtaColumn(ProgressColumn):
    """``eta h:mm:ss`` from a :class:`RoundClock` (``-:--:--`` until it knows)."""

    def __init__(self, round_clock: RoundClock) -> None:
        super().__init__()
        self.round_clock = round_clock

    def render(self, task: Task) -> Text:
        return Text(f"eta {clock(self.round_clock.remaining())}", style="progress.remaining")
