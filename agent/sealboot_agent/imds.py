"""A strict IMDSv2 client: token first, never an IMDSv1 fallback.

Example::

    >>> imds = Imds("http://169.254.169.254", requests.Session(), Deadline(60))
    >>> imds.get("meta-data/instance-id")
    'i-0123456789abcdef0'
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass
from typing import Any, Callable

import requests

from sealboot_agent.errors import ImdsError

log = logging.getLogger(__name__)

TOKEN_TTL = 21600
# Refresh the token this long before it expires, so a slow boot never sends a stale one.
_TOKEN_SLACK = 60.0
_REQUEST_TIMEOUT = 2.0


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


@dataclass(frozen=True)
class RoleCredentials:
    access_key: str
    secret_key: str
    token: str
    expiry_time: str
    role: str

    def as_botocore_metadata(self) -> dict[str, str]:
        return {
            "access_key": self.access_key,
            "secret_key": self.secret_key,
            "token": self.token,
            "expiry_time": self.expiry_time,
        }


class Imds:
    """IMDSv2 over an injected requests session, with retries bounded by a Deadline."""

    def __init__(self, endpoint: str, http: requests.Session, deadline: Deadline):
        self.base = endpoint.rstrip("/") + "/latest/"
        self.http = http
        self.deadline = deadline
        self._token: str | None = None
        self._token_expires = 0.0
        self.requests = 0

    def _timeout(self) -> float:
        return max(0.05, min(_REQUEST_TIMEOUT, self.deadline.remaining()))

    def token(self) -> str:
        """A valid IMDSv2 token, fetched again shortly before the old one expires."""
        if self._token and self.deadline.clock() < self._token_expires - _TOKEN_SLACK:
            return self._token
        attempt = 0
        while True:
            self.requests += 1
            try:
                resp = self.http.put(
                    self.base + "api/token",
                    headers={"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL)},
                    timeout=self._timeout(),
                )
            except requests.RequestException as exc:
                reason = f"{type(exc).__name__}"
                if isinstance(exc, requests.Timeout):
                    reason += (
                        " (a PUT that times out from a container usually means the IMDS hop "
                        "limit is 1; raise HttpPutResponseHopLimit to 2)"
                    )
            else:
                if resp.status_code == 200 and resp.text:
                    self._token = resp.text
                    self._token_expires = self.deadline.clock() + TOKEN_TTL
                    return self._token
                reason = f"HTTP {resp.status_code}"
                if resp.status_code in (400, 403, 405):
                    raise ImdsError(f"IMDSv2 token request refused ({reason})")
            log.debug("IMDS token attempt %d failed: %s", attempt + 1, reason)
            if not self.deadline.backoff(attempt):
                raise ImdsError(f"no IMDSv2 token before the deadline: {reason}")
            attempt += 1

    def get(self, path: str, *, retry_404: bool = False) -> str:
        """GET ``/latest/<path>`` with the token; 404 is final unless *retry_404*."""
        attempt = 0
        while True:
            token = self.token()
            self.requests += 1
            try:
                resp = self.http.get(
                    self.base + path,
                    headers={"X-aws-ec2-metadata-token": token},
                    timeout=self._timeout(),
                )
            except requests.RequestException as exc:
                reason = type(exc).__name__
            else:
                if resp.status_code == 200:
                    return resp.text
                reason = f"HTTP {resp.status_code}"
                if resp.status_code == 401:
                    self._token = None
                elif resp.status_code == 404 and not retry_404:
                    raise ImdsError(f"IMDS has no {path!r} (HTTP 404)")
                elif resp.status_code not in (404, 429) and resp.status_code < 500:
                    raise ImdsError(f"IMDS refused {path!r} ({reason})")
            log.debug("IMDS GET %s attempt %d failed: %s", path, attempt + 1, reason)
            if not self.deadline.backoff(attempt):
                raise ImdsError(f"IMDS did not answer {path!r} before the deadline: {reason}")
            attempt += 1

    def region(self) -> str:
        return self.get("meta-data/placement/region").strip()

    def instance_id(self) -> str:
        return self.get("meta-data/instance-id").strip()

    def role_credentials(self) -> RoleCredentials:
        """The instance profile's credentials; waits (within the deadline) for a late profile."""
        listing = self.get("meta-data/iam/security-credentials/", retry_404=True).strip()
        role = listing.splitlines()[0].strip() if listing else ""
        if not role:
            raise ImdsError("no instance profile is attached to this instance")
        body = self.get(f"meta-data/iam/security-credentials/{role}", retry_404=True)
        try:
            data: Any = json.loads(body)
            if data.get("Code", "Success") != "Success":
                raise ImdsError(f"IMDS reports credentials for role {role!r}: {data.get('Code')}")
            return RoleCredentials(
                access_key=data["AccessKeyId"],
                secret_key=data["SecretAccessKey"],
                token=data["Token"],
                expiry_time=data["Expiration"],
                role=role,
            )
        except (ValueError, KeyError, AttributeError, TypeError) as exc:
            raise ImdsError(f"IMDS credentials for role {role!r} are malformed") from exc
