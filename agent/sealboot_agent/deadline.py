"""One deadline for the whole run: the budget every loop checks, and a watchdog for the calls
that cannot be given a total timeout.

Timeouts in requests and botocore bound each socket read, not a call: an endpoint that trickles
its answer a byte at a time keeps a call alive for as long as it likes. The IMDS client reads
its answers in pieces and checks the Deadline between them; botocore offers no such hook, so the
Watchdog interrupts the main thread once a call is still blocked after the deadline.

Example::

    >>> with Watchdog(300):
    ...     run_fetch(cfg, deps)    # a call still blocked at 301 s raises DeadlinePassed
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any, Callable, TypeVar

from sealboot_agent.errors import AgentError, ImdsError, ServiceError, shown

log = logging.getLogger(__name__)

T = TypeVar("T")

IMDS = "IMDS"
AWS = "AWS"
# The loops that check the deadline stop on their own, with a precise message; the watchdog
# acts only on a call still blocked this long after it.
WATCHDOG_GRACE = 1.0
# If a call is still blocked this long after the first alarm, the process ends at once.
WATCHDOG_BACKSTOP = 1.0
_HINT = (
    "an endpoint answered too slowly or not at all (timeouts apply per read, so an answer "
    "that trickles in never times out); 'sealboot-agent status' shows how far the run got. "
    "The agent runs again on the next boot, or run 'sealboot-agent fetch' by hand"
)

# thread id -> (IMDS or AWS, what) for each thread blocked in a network call. The alarm handler
# reads it without a lock: it runs in the main thread, which may hold any lock when interrupted,
# and single dict operations are atomic under the GIL.
_calls: dict[int, tuple[str, str]] = {}
_fired = False


class Deadline:
    """One overall budget that every retry loop checks."""

    def __init__(
        self,
        seconds: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.clock = clock
        self.sleep_fn = sleep
        self.end = clock() + seconds
        self.seconds = seconds

    def remaining(self) -> float:
        return max(0.0, self.end - self.clock())

    def expired(self) -> bool:
        return self.remaining() <= 0

    def backoff(self, attempt: int, base: float = 0.2, cap: float = 5.0) -> bool:
        """Sleep with full jitter; False when the deadline leaves no room for another try."""
        delay = random.uniform(0, min(cap, base * (2**attempt)))  # noqa: S311 - jitter, not crypto
        if delay >= self.remaining():
            return False
        self.sleep_fn(delay)
        return True


class DeadlinePassed(BaseException):
    """Raised in the main thread by the Watchdog: a network call outlived the deadline.

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` on the way (botocore
    has several) takes it for a failed request and retries it.
    """

    def __init__(self, seconds: float, kind: str, what: str):
        super().__init__(f"the {seconds:g}s deadline ran out while waiting for {what}")
        self.seconds = seconds
        self.kind = kind
        self.what = what

    def error(self) -> AgentError:
        """The agent error to report; it does not say what was deleted: it may be either."""
        cls = ImdsError if self.kind == IMDS else ServiceError
        return cls(str(self), hint=_HINT)


@contextlib.contextmanager
def waiting_for(kind: str, what: str) -> Iterator[None]:
    """Mark this thread as blocked in a network call (*kind* IMDS or AWS) for the Watchdog."""
    ident = threading.get_ident()
    previous = _calls.get(ident)
    _calls[ident] = (kind, shown(what))
    try:
        yield
    finally:
        if previous is None:
            _calls.pop(ident, None)
        else:
            _calls[ident] = previous


def _flush() -> None:
    handlers = logging.getLogger("sealboot_agent").handlers + logging.getLogger().handlers
    for stream in [*handlers, sys.stdout, sys.stderr]:
        with contextlib.suppress(Exception):
            stream.flush()


def watchdog_fired() -> bool:
    """Whether a Watchdog fired in this process."""
    return _fired


def finish(code: int) -> int:
    """*code*; or, once the watchdog fired, flush the logs and end the process with it now.

    A worker thread may still be blocked on a trickling answer, and interpreter exit would wait
    for it (a thread pool joins its workers at exit).
    """
    if _fired:
        _flush()
        os._exit(code)
    return code


class Watchdog:
    """Interrupt a network call that is still blocked *grace* seconds after the deadline.

    SIGALRM is the one way to interrupt a socket read that keeps receiving a byte now and then,
    so the watchdog arms only in the main thread (where signals arrive; callers on other threads
    are unaffected) and acts only while some thread is inside ``waiting_for``: on a call in the
    main thread it raises DeadlinePassed there; on a call in a worker thread (which the main
    thread waits for, and a signal cannot reach) it logs the error, calls *last_words* and ends
    the process. With no call in flight it disarms for good: the loops check the deadline before
    every call, so none can start any more, and the hand-off after the network phases (user
    boothooks) is never cut short.
    """

    def __init__(
        self,
        seconds: float,
        *,
        grace: float = WATCHDOG_GRACE,
        backstop: float = WATCHDOG_BACKSTOP,
        last_words: Callable[[AgentError], None] | None = None,
        exit_fn: Callable[[int], Any] = os._exit,
    ):
        self.seconds = seconds
        self.grace = grace
        self.backstop = backstop
        self.last_words = last_words
        self.exit_fn = exit_fn
        self.armed = False
        self.fired: DeadlinePassed | None = None
        self._previous: Any = None

    def __enter__(self) -> Watchdog:
        if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
            self._previous = signal.signal(signal.SIGALRM, self._alarm)
            signal.setitimer(signal.ITIMER_REAL, max(0.001, self.seconds + self.grace))
            self.armed = True
        return self

    def __exit__(self, *exc: object) -> None:
        self.disarm()

    def disarm(self) -> None:
        if self.armed:
            self.armed = False
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._previous)

    def _alarm(self, signum: int, frame: FrameType | None) -> None:
        global _fired
        calls = _calls.copy()
        if not calls:
            self.disarm()
            return
        main = calls.get(threading.main_thread().ident or 0)
        kind, what = main or next(iter(calls.values()))
        passed = DeadlinePassed(self.seconds, kind, what)
        first = self.fired is None
        self.fired = passed
        _fired = True
        if main is not None and first:
            signal.setitimer(signal.ITIMER_REAL, max(0.001, self.backstop))
            raise passed
        self._end(passed.error())

    def _end(self, err: AgentError) -> None:
        self.disarm()
        log.error("%s", err.message)
        log.error("what to do: %s", err.advice)
        log.error("exit %d", err.exit_code)
        if self.last_words is not None:
            try:
                self.last_words(err)
            except Exception:  # noqa: BLE001 - the exit below must happen whatever broke here
                log.exception("could not record the failure")
        _flush()
        self.exit_fn(err.exit_code)


def within_deadline(
    seconds: float, fn: Callable[[], T], *, last_words: Callable[[AgentError], None] | None = None
) -> T:
    """Run *fn* under a Watchdog; a DeadlinePassed that nothing turned into an error becomes one."""
    with Watchdog(seconds, last_words=last_words):
        try:
            return fn()
        except DeadlinePassed as passed:
            raise passed.error() from None
