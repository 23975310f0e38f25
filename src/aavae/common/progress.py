"""Progress of every long step: a bar in a terminal, a plain line every ~30 seconds elsewhere.

A bar written to a pipe, a CI log or nohup shows nothing until the end (or hundreds of
carriage returns), so there progress is logged as plain lines (``raw_pixels: linear probe: fit
3/7, weight decay 0.001: 2 min elapsed``); in a terminal a tqdm bar appears after a couple of
seconds. The one progress helper: evaluation, embed, and training's Lightning callback
(:class:`aavae.training.progress.PlainProgress`) use it. :func:`progress_scope` names what a
block works on, so the functions it calls need not be told.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
import threading
import time
from collections.abc import Iterator
from types import TracebackType

log = logging.getLogger("aavae.common.progress")

EVERY_SECONDS = 30.0  # between two plain progress lines (and before the first)
BAR_DELAY_SECONDS = 2.0  # before a terminal bar appears
HEARTBEAT_SECONDS = 1.0  # between two heartbeats of a phase of unknown length

_scope: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("aavae_progress_scope", default=())


def output_is_terminal() -> bool:
    """Whether progress can be a bar: stdout is a terminal (not a pipe, a file or nohup)."""
    return sys.stdout.isatty()


def duration(seconds: float) -> str:
    """``42 s``, ``12 min``, ``1.8 h``: as precise as a person reading a log needs."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@contextlib.contextmanager
def progress_scope(label: str) -> Iterator[None]:
    """Prefix the progress lines of everything inside with ``label`` (nested scopes join)."""
    token = _scope.set((*_scope.get(), label))
    try:
        yield
    finally:
        _scope.reset(token)


class Progress:
    """Progress of one phase: ``with Progress("kNN", total=10_000, unit="images") as p:``,
    ``p.advance(n)``, ``p.note("weight decay 0.1")``. With ``total=None`` (an opaque call such
    as t-SNE) a heartbeat reports the time elapsed. ``terminal`` overrides the stdout check."""

    def __init__(
        self,
        what: str,
        total: int | None = None,
        unit: str = "it",
        *,
        enabled: bool = True,
        terminal: bool | None = None,
    ) -> None:
        self.what = ": ".join((*_scope.get(), what))
        self.total, self.unit, self.enabled = total, unit, enabled
        self.terminal = output_is_terminal() if terminal is None else terminal
        self.done = 0
        self.detail = ""
        self.lines = 0  # plain lines logged so far
        self._bar = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def __enter__(self) -> Progress:
        self._started = self._last_line = time.monotonic()
        if not self.enabled:
            return self
        if self.terminal:
            self._bar = _terminal_bar(self.what, self.total, self.unit)
        if self.total is None:
            self._heartbeat = threading.Thread(target=self._beat, name="aavae-progress", daemon=True)
            self._heartbeat.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        if self._bar is not None:
            self._bar.close()
        elif self.lines and kind is None:  # a phase that said it was running says it ended
            log.info("%s: done in %s%s", self.what, duration(self.elapsed()), self._amount(final=True))

    def elapsed(self) -> float:
        return time.monotonic() - self._started

    def advance(self, count: int = 1) -> None:
        """``count`` more units of work done."""
        self.done += count
        if self._bar is not None:
            self._bar.update(count)
        self._maybe_report()

    def note(self, detail: str) -> None:
        """What is being done now, shown after the count (replaces the previous note)."""
        self.detail = detail
        if self._bar is not None:
            self._bar.set_postfix_str(detail, refresh=False)
        self._maybe_report()

    def _maybe_report(self) -> None:
        if self._bar is not None or not self.enabled:
            return
        now = time.monotonic()
        with self._lock:
            if now - self._last_line < EVERY_SECONDS:
                return
            self._last_line = now
            self.lines += 1
        log.info("%s", self.line())

    def line(self) -> str:
        """The plain progress line: what, how far, the note, and the time spent and left."""
        elapsed = self.elapsed()
        head = f"{self.what}: {self._amount()}" if self.total else self.what
        times = f"{duration(elapsed)} elapsed"
        if self.total and 0 < self.done < self.total:
            times += f", about {duration(elapsed * (self.total - self.done) / self.done)} left"
        return head + (f", {self.detail}" if self.detail else "") + f": {times}"

    def _amount(self, final: bool = False) -> str:
        if final:
            return f" ({self.done:,} {self.unit})" if self.done else ""
        return f"{self.done:,}/{self.total:,} {self.unit} ({100 * self.done / max(self.total or 1, 1):.0f}%)"

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            if self._bar is not None:
                self._bar.refresh()
            else:
                self._maybe_report()


def _terminal_bar(what: str, total: int | None, unit: str):
    from tqdm.auto import tqdm

    shape = {"bar_format": "{desc}: {elapsed} elapsed{postfix}"} if total is None else {}
    return tqdm(total=total, desc=what, unit=f" {unit}", file=sys.stdout, mininterval=1.0,
                delay=BAR_DELAY_SECONDS, dynamic_ncols=True, **shape)
