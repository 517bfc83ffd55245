"""A strict IMDSv2 client: token first, never an IMDSv1 fallback, never a redirect.

Each answer is read in pieces against the deadline and capped in size, and each value is checked
before use: IMDS answers end up in paths, HTTP headers, the state file and the log.

Example::

    >>> imds = Imds("http://169.254.169.254", requests.Session(), Deadline(60))
    >>> imds.get("meta-data/instance-id")
    'i-0123456789abcdef0'
"""

from __future__ import annotations

import datetime
import http.client
import json
import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Callable

import requests
import urllib3

from sealboot_agent.deadline import IMDS, DeadlinePassed, waiting_for
from sealboot_agent.deadline import Deadline as Deadline  # re-exported: callers import it here
from sealboot_agent.errors import ImdsError, shown
from sealboot_agent.wire import REGION_RE

log = logging.getLogger(__name__)

TOKEN_TTL = 21600
TOKEN_HEADER = "X-aws-ec2-metadata-token"  # noqa: S105 - a header name
# Refresh the token this long before it expires, so a slow boot never sends a stale one.
_TOKEN_SLACK = 60.0
_REQUEST_TIMEOUT = 2.0
# IMDS answers are small (the credentials document, the largest read here, is ~1.5 KB); reading
# anything near this would only cost memory and time.
MAX_BODY = 64 * 1024
_CHUNK = 16 * 1024
_CREDENTIALS = "meta-data/iam/security-credentials/"

# Visible ASCII only: the token goes back out as a header, where a CR or LF would split it.
_TOKEN_RE = re.compile(r"\A[!-~]{1,4096}\Z")
# The instance id names directories (/var/lib/cloud/instances/<id>).
INSTANCE_ID_RE = re.compile(r"\Ai-[0-9a-f]{8,17}\Z")
# IAM's rule for role names; the name becomes part of the credentials URL.
_ROLE_RE = re.compile(r"\A[A-Za-z0-9+=,.@_-]{1,64}\Z")
_ACCESS_KEY_RE = re.compile(r"\A[A-Za-z0-9]{16,128}\Z")
_VISIBLE_RE = re.compile(r"\A[!-~]+\Z")  # the secret key and session token become headers too


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


@dataclass(frozen=True)
class _Answer:
    status: int
    body: bytes
    location: str


class _Retry(Exception):
    """A failure that another try may cure; the message says what happened."""


def _read_some(raw: Any) -> Callable[[int], bytes]:
    """A read that returns as soon as any bytes are there.

    urllib3's ``read(n)`` waits for all *n* bytes, however slowly they come. urllib3 2 has
    ``read1``; urllib3 1.26 (which the agent ships, for botocore on Python 3.9) does not, but
    the http.client response it wraps does.
    """
    read1 = getattr(raw, "read1", None)
    if callable(read1):
        return read1  # type: ignore[no-any-return]
    inner = getattr(getattr(raw, "_fp", None), "read1", None)
    if callable(inner):
        return inner  # type: ignore[no-any-return]
    return raw.read  # type: ignore[no-any-return]


def _expiry(text: str) -> float | None:
    """Seconds since the epoch of an IMDS ``Expiration`` (``2026-01-01T00:00:00Z``), or None."""
    if len(text) > 40:
        return None
    try:
        when = datetime.datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] == "Z" else text)
    except ValueError:
        return None
    return None if when.tzinfo is None else when.timestamp()


def _describe(value: object) -> str:
    """What is wrong with a credentials field, without showing it (it may be a secret)."""
    if value is None:
        return "missing or null"
    if not isinstance(value, str):
        return f"a JSON {type(value).__name__}, not a string"
    if not value:
        return "empty"
    return f"{len(value)} characters, not all of them allowed"


class Imds:
    """IMDSv2 over an injected requests session, with retries bounded by a Deadline."""

    def __init__(
        self,
        endpoint: str,
        http: requests.Session,
        deadline: Deadline,
        *,
        wall: Callable[[], float] = time.time,
    ):
        self.base = endpoint.rstrip("/") + "/latest/"
        self.http = http
        self.deadline = deadline
        self.wall = wall
        self._token: str | None = None
        self._token_expires = 0.0
        self.requests = 0

    def _send(self, method: str, url: str, headers: dict[str, str]) -> _Answer:
        """One request, its whole answer read within the deadline; raise _Retry or ImdsError."""
        remaining = self.deadline.remaining()
        if remaining <= 0:
            raise _Retry("the deadline had passed")
        self.requests += 1
        try:
            with waiting_for(IMDS, f"IMDS ({method} {url})"):
                return self._exchange(method, url, headers, min(_REQUEST_TIMEOUT, remaining))
        except DeadlinePassed as exc:
            # The watchdog cut a read that outlived the deadline (one read may wait up to the
            # timeout); the loop then gives up with the usual message.
            raise _Retry("no complete answer when the deadline passed") from exc

    def _exchange(self, method: str, url: str, headers: dict[str, str], timeout: float) -> _Answer:
        try:
            resp = self.http.request(
                method,
                url,
                # identity: on urllib3 1.26 read1 goes around its decoder; IMDS never compresses.
                headers={**headers, "Accept-Encoding": "identity"},
                timeout=max(0.05, timeout),
                stream=True,
                # A redirect would carry the token header to wherever the answer points.
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise _Retry(type(exc).__name__) from exc
        try:
            body = self._body(resp, url)
        finally:
            resp.close()
        return _Answer(resp.status_code, body, resp.headers.get("Location", ""))

    def _body(self, resp: requests.Response, url: str) -> bytes:
        """The body, read piece by piece so that the deadline holds however slowly it comes."""
        length = resp.headers.get("Content-Length")
        expected: int | None = None
        if length is not None:
            if not length.isdigit() or len(length) > 12:
                raise _Retry(f"a malformed Content-Length '{shown(length, 20)}'")
            expected = int(length)
            if expected > MAX_BODY:
                raise ImdsError(
                    f"IMDS answered {url} with {expected} bytes; no IMDS answer is over "
                    f"{MAX_BODY} bytes (is {self.base} really IMDS?)"
                )
        if resp.headers.get("Content-Encoding", "identity").lower() != "identity":
            raise ImdsError(
                f"IMDS answered {url} with Content-Encoding "
                f"'{shown(resp.headers['Content-Encoding'], 40)}'; it was asked for none"
            )
        read = _read_some(resp.raw)
        parts: list[bytes] = []
        total = 0
        try:
            while expected is None or total < expected:
                if self.deadline.expired():
                    raise _Retry(
                        f"the answer was still arriving ({total} bytes) when the deadline passed"
                    )
                chunk = read(_CHUNK)
                if not chunk:
                    break
                total += len(chunk)
                if total > MAX_BODY:
                    raise ImdsError(
                        f"IMDS answered {url} with over {MAX_BODY} bytes; no IMDS answer is "
                        f"that large (is {self.base} really IMDS?)"
                    )
                parts.append(chunk)
            if expected is not None and total < expected:
                raise _Retry(f"the answer was cut off after {total} of {expected} bytes")
            # Reads the (empty) rest, so urllib3 sees the answer complete and reuses the
            # connection; on urllib3 1.26 read1 went around it.
            resp.raw.read()
        except (OSError, http.client.HTTPException, urllib3.exceptions.HTTPError) as exc:
            raise _Retry(type(exc).__name__) from exc
        return b"".join(parts)

    def _redirected(self, ans: _Answer, url: str) -> ImdsError:
        return ImdsError(
            f"IMDS answered {url} with a redirect (HTTP {ans.status}) to "
            f"'{shown(ans.location, 100)}'; IMDS never redirects, and the token is not sent on",
            hint="check what answers at the IMDS address (a proxy, a container runtime, "
            "SEALBOOT_IMDS_ENDPOINT); the real IMDS never redirects",
        )

    def token(self) -> str:
        """A valid IMDSv2 token, fetched again shortly before the old one expires."""
        if self._token and self.deadline.clock() < self._token_expires - _TOKEN_SLACK:
            return self._token
        url = self.base + "api/token"
        attempt = 0
        while True:
            try:
                ans = self._send(
                    "PUT", url, {"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL)}
                )
            except _Retry as exc:
                reason = str(exc)
                if isinstance(exc.__cause__, requests.Timeout):
                    reason += (
                        " (a PUT that times out from a container usually means the IMDS hop "
                        "limit is 1; raise HttpPutResponseHopLimit to 2)"
                    )
            else:
                if ans.status == 200:
                    self._token = self._valid_token(ans.body, url)
                    self._token_expires = self.deadline.clock() + TOKEN_TTL
                    return self._token
                reason = f"HTTP {ans.status}"
                if 300 <= ans.status < 400:
                    raise self._redirected(ans, url)
                if ans.status in (400, 403, 405):
                    raise ImdsError(f"IMDSv2 token request refused: PUT {url} answered {reason}")
            log.debug("IMDS token attempt %d failed: %s", attempt + 1, reason)
            if not self.deadline.backoff(attempt):
                raise ImdsError(f"no IMDSv2 token before the deadline from PUT {url}: {reason}")
            attempt += 1

    def _valid_token(self, body: bytes, url: str) -> str:
        token = body.decode("ascii", "replace")
        if not _TOKEN_RE.match(token):
            raise ImdsError(
                f"IMDS answered PUT {url} with a malformed token ({len(body)} bytes: "
                "empty, too long, or not visible ASCII)"
            )
        return token

    def get(self, path: str, *, retry_404: bool = False) -> str:
        """GET ``/latest/<path>`` with the token; 404 is final unless *retry_404*."""
        url = self.base + path
        attempt = 0
        while True:
            token = self.token()
            try:
                ans = self._send("GET", url, {TOKEN_HEADER: token})
            except _Retry as exc:
                reason = str(exc)
            else:
                if ans.status == 200:
                    return self._text(ans.body, url)
                reason = f"HTTP {ans.status}"
                if 300 <= ans.status < 400:
                    raise self._redirected(ans, url)
                if ans.status == 401:
                    self._token = None
                elif ans.status == 404 and not retry_404:
                    raise ImdsError(f"IMDS has no {url} (HTTP 404)")
                elif ans.status not in (404, 429) and ans.status < 500:
                    raise ImdsError(f"IMDS refused GET {url} ({reason})")
            log.debug("IMDS GET %s attempt %d failed: %s", url, attempt + 1, reason)
            if not self.deadline.backoff(attempt):
                raise ImdsError(f"IMDS did not answer GET {url} before the deadline: {reason}")
            attempt += 1

    @staticmethod
    def _text(body: bytes, url: str) -> str:
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ImdsError(
                f"IMDS answered GET {url} with bytes that are not UTF-8: {shown(body, 60)}"
            ) from exc

    def region(self) -> str:
        value = self.get("meta-data/placement/region").strip()
        if not REGION_RE.match(value):
            raise ImdsError(
                f"IMDS answered {self.base}meta-data/placement/region with "
                f"'{shown(value, 60)}', not an AWS region name"
            )
        return value

    def instance_id(self) -> str:
        value = self.get("meta-data/instance-id").strip()
        if not INSTANCE_ID_RE.match(value):
            raise ImdsError(
                f"IMDS answered {self.base}meta-data/instance-id with '{shown(value, 60)}', "
                "not an EC2 instance id"
            )
        return value

    def role_credentials(self) -> RoleCredentials:
        """The instance profile's credentials; waits (within the deadline) for a late profile."""
        listing = self.get(_CREDENTIALS, retry_404=True).strip()
        role = listing.splitlines()[0].strip() if listing else ""
        if not role:
            raise ImdsError(
                f"no instance profile is attached to this instance ({self.base}{_CREDENTIALS} "
                "lists no role)"
            )
        if not _ROLE_RE.match(role) or role in (".", ".."):
            raise ImdsError(
                f"IMDS answered {self.base}{_CREDENTIALS} with '{shown(role, 80)}', "
                "not an IAM role name"
            )
        url = self.base + _CREDENTIALS + role
        body = self.get(_CREDENTIALS + role, retry_404=True)
        try:
            data: Any = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise ImdsError(f"IMDS credentials for role {role} ({url}) are not JSON") from exc
        if not isinstance(data, dict):
            raise ImdsError(f"IMDS credentials for role {role} ({url}) are not a JSON object")
        code = data.get("Code", "Success")
        if code != "Success":
            raise ImdsError(f"IMDS reports credentials for role {role}: {shown(code, 100)}")
        fields: dict[str, str] = {}
        for key, pattern in (
            ("AccessKeyId", _ACCESS_KEY_RE),
            ("SecretAccessKey", _VISIBLE_RE),
            ("Token", _VISIBLE_RE),
            ("Expiration", _VISIBLE_RE),
        ):
            value = data.get(key)
            if not isinstance(value, str) or not pattern.match(value):
                raise ImdsError(
                    f"IMDS credentials for role {role} ({url}) are malformed: "
                    f"{key} is {_describe(value)}"
                )
            fields[key] = value
        expires = _expiry(fields["Expiration"])
        if expires is None:
            raise ImdsError(
                f"IMDS credentials for role {role} ({url}) are malformed: Expiration "
                f"'{shown(fields['Expiration'], 40)}' is not an ISO 8601 time"
            )
        if expires <= self.wall():
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.wall()))
            raise ImdsError(
                f"IMDS credentials for role {role} expired at {fields['Expiration']} "
                f"(this instance's clock says {now})",
                hint="IMDS renews them well before they expire: check this instance's clock "
                "(chrony, NTP), then run 'sealboot-agent fetch' again",
            )
        return RoleCredentials(
            access_key=fields["AccessKeyId"],
            secret_key=fields["SecretAccessKey"],
            token=fields["Token"],
            expiry_time=fields["Expiration"],
            role=role,
        )
