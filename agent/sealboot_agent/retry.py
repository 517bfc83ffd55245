"""The retry rule for AWS calls: full-jitter backoff inside one deadline.

botocore's standard mode does a quick retry of its own; this loop adds what botocore cannot
express: a total deadline shared by every call (no attempt starts after it, and a call the
Watchdog cuts short counts as timed out), and a short, bounded window after boot in which
AccessDenied is retried because a freshly attached instance profile takes time to propagate.

Example::

    >>> policy = RetryPolicy(Deadline(300), denied_until=0.0)
    >>> value = with_retries(lambda: client.get_secret_value(SecretId=n), policy, f"reading {n}")
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, TypeVar

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    CredentialRetrievalError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from sealboot_agent.deadline import AWS, Deadline, DeadlinePassed, waiting_for
from sealboot_agent.errors import shown
from sealboot_agent.stores import DENIED, RETRYABLE, IncompleteResponse, is_denied

log = logging.getLogger(__name__)

T = TypeVar("T")

_TRANSPORT = (
    EndpointConnectionError,
    ConnectTimeoutError,
    ReadTimeoutError,
    ConnectionClosedError,
    NoCredentialsError,
    CredentialRetrievalError,
)


class NotStarted(Exception):
    """The deadline had passed before a call could start, so it was not made."""


def client_error(exc: ClientError) -> tuple[str, str, str]:
    """(code, message, request id) of a botocore error; a bare 403 counts as access denied.

    All three come from the endpoint, so they are returned escaped and bounded (``shown``).
    """
    err = exc.response.get("Error", {})
    code = shown(err.get("Code", "?"), 100)
    message = shown(err.get("Message", ""))
    meta = exc.response.get("ResponseMetadata", {})
    status = meta.get("HTTPStatusCode")
    if status == 403 and is_denied(code, status) and code not in DENIED:
        # Some endpoints answer 403 in a body botocore cannot parse; it is still a denial.
        code, message = "AccessDeniedException", f"HTTP 403 {message}"
    return code, message, shown(meta.get("RequestId", ""), 100)


def classify(exc: BaseException) -> str:
    """``retry`` (transient), ``denied`` (retry only in the boot window) or ``final``."""
    if isinstance(exc, ClientError):
        code, _, _ = client_error(exc)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        if code in RETRYABLE or status >= 500:
            return "retry"
        if code in DENIED:
            return "denied"
        return "final"
    if isinstance(exc, (IncompleteResponse, *_TRANSPORT)):
        return "retry"
    if isinstance(exc, BotoCoreError):
        # urllib3 protocol errors (a connection cut mid-body) arrive as generic botocore errors.
        name = type(exc).__name__
        return "retry" if "Connection" in name or "Protocol" in name else "final"
    return "final"


class Exhausted(Exception):
    """A retryable failure that outlived the deadline; ``cause`` is the last error."""

    def __init__(self, cause: BaseException, attempts: int, seconds: float):
        super().__init__(str(cause))
        self.cause = cause
        self.attempts = attempts
        self.seconds = seconds

    def describe(self) -> str:
        if isinstance(self.cause, (DeadlinePassed, NotStarted)):
            return f"{self.cause}; gave up after {self.attempts} attempt(s)"
        if isinstance(self.cause, ClientError):
            code, message, rid = client_error(self.cause)
            what = f"{code}: {message}" + (f" (request id {rid})" if rid else "")
        else:
            what = f"{type(self.cause).__name__}: {shown(self.cause)}"
        return (
            f"{what}; gave up after {self.attempts} attempt(s) when the "
            f"{self.seconds:g}s deadline ran out"
        )


@dataclass(frozen=True)
class RetryPolicy:
    """The shared deadline, and until when (on the deadline's clock) AccessDenied is retried."""

    deadline: Deadline
    denied_until: float = 0.0


def with_retries(fn: Callable[[], T], policy: RetryPolicy, what: str) -> T:
    """Call *fn*; retry transient failures with full jitter until the deadline."""
    attempt = 0
    last: BaseException | None = None
    while True:
        if policy.deadline.expired():
            # Also the first attempt: after the deadline no call starts, a delete least of all.
            cause = last or NotStarted(
                f"the {policy.deadline.seconds:g}s deadline had passed before {what} could start"
            )
            raise Exhausted(cause, attempt, policy.deadline.seconds)
        try:
            with waiting_for(AWS, f"AWS ({what})"):
                return fn()
        except DeadlinePassed as exc:
            # Only the main thread gets this: the Watchdog cut a call that outlived the deadline,
            # a timeout botocore cannot set (its timeouts are per read).
            raise Exhausted(exc, attempt + 1, policy.deadline.seconds) from None
        except (ClientError, BotoCoreError) as exc:
            kind = classify(exc)
            if kind == "final":
                raise
            if kind == "denied" and policy.deadline.clock() >= policy.denied_until:
                raise
            label = client_error(exc)[0] if isinstance(exc, ClientError) else type(exc).__name__
            if not policy.deadline.backoff(attempt, base=0.1, cap=4.0):
                raise Exhausted(exc, attempt + 1, policy.deadline.seconds) from exc
            last = exc
            attempt += 1
            log.info("%s: %s, retry %d", what, label, attempt)
