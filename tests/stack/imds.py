"""A strict IMDSv2 emulator: tokens required, PUT-only token endpoint, TTLs, no X-Forwarded-For.

Example::

    >>> with ImdsEmulator(Identity(), lambda: creds) as imds:
    ...     requests.put(imds.url + "/latest/api/token",
    ...                  headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.stack.serve import Background

TOKEN_HEADER = "X-aws-ec2-metadata-token"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
_VERSION_RE = re.compile(r"^/(latest|\d{4}-\d{2}-\d{2})(/.*)?$")


@dataclass
class Identity:
    """Who the emulated instance is."""

    instance_id: str = "i-0123456789abcdef0"
    region: str = "us-east-1"
    availability_zone: str = "us-east-1a"
    account_id: str = "123456789012"
    role_name: str = "sealboot-node"
    mac: str = "06:00:00:00:00:01"
    local_ipv4: str = "10.0.0.10"
    hostname: str = "ip-10-0-0-10.ec2.internal"
    image_id: str = "ami-0123456789abcdef0"
    instance_type: str = "t3.small"
    user_data: bytes | None = None


@dataclass
class Faults:
    """What the emulator should get wrong; tests flip these while it runs."""

    unavailable_until: float = 0.0  # close connections until this monotonic time
    latency: float = 0.0  # seconds added to every response
    no_role_until: float = 0.0  # security-credentials/ answers 404 until then
    refuse_token: bool = False  # token PUTs get 403
    trickle: float = 0.0  # > 0: every body is sent a byte at a time, this many seconds apart
    trickle_for: float = 20.0  # ... for at most this long, then the rest at once
    redirect: str = ""  # GETs with a valid token answer 302 to this base URL + the path


@dataclass
class Hit:
    method: str
    path: str
    status: int


@dataclass
class _State:
    identity: Identity
    credentials: Callable[[], dict[str, Any] | str]
    faults: Faults = field(default_factory=Faults)
    tokens: dict[str, float] = field(default_factory=dict)
    hits: list[Hit] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def write_slowly(wfile: Any, data: bytes, every: float, limit: float) -> bool:
    """Write *data* a byte every *every* seconds for at most *limit* seconds, then the rest.

    Bounded so that a server thread always ends by itself; False when the client went away.
    """
    end = time.monotonic() + limit
    sent = 0
    try:
        while sent < len(data) and time.monotonic() < end:
            wfile.write(data[sent : sent + 1])
            wfile.flush()
            sent += 1
            time.sleep(every)
        wfile.write(data[sent:])
        wfile.flush()
    except OSError:
        return False
    return True


def role_credentials(sts_credentials: dict[str, Any]) -> dict[str, str]:
    """STS ``Credentials`` as IMDS serves them under ``iam/security-credentials/<role>``."""
    return {
        "Code": "Success",
        "LastUpdated": "2026-01-01T00:00:00Z",
        "Type": "AWS-HMAC",
        "AccessKeyId": sts_credentials["AccessKeyId"],
        "SecretAccessKey": sts_credentials["SecretAccessKey"],
        "Token": sts_credentials["SessionToken"],
        "Expiration": sts_credentials["Expiration"].strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _tree(ident: Identity, creds: Callable[[], dict[str, Any] | str]) -> dict[str, Any]:
    """The metadata tree: a str leaf is a file, a dict is a directory listing."""
    doc = {
        "accountId": ident.account_id,
        "architecture": "x86_64",
        "availabilityZone": ident.availability_zone,
        "imageId": ident.image_id,
        "instanceId": ident.instance_id,
        "instanceType": ident.instance_type,
        "privateIp": ident.local_ipv4,
        "region": ident.region,
        "version": "2017-09-30",
    }
    return {
        "meta-data": {
            "ami-id": ident.image_id,
            "hostname": ident.hostname,
            "instance-id": ident.instance_id,
            "instance-type": ident.instance_type,
            "local-hostname": ident.hostname,
            "local-ipv4": ident.local_ipv4,
            "mac": ident.mac,
            "network": {
                "interfaces": {
                    "macs": {
                        ident.mac: {
                            "device-number": "0",
                            "interface-id": "eni-0123456789abcdef0",
                            "local-hostname": ident.hostname,
                            "local-ipv4s": ident.local_ipv4,
                            "mac": ident.mac,
                            "owner-id": ident.account_id,
                            "subnet-id": "subnet-0123456789abcdef0",
                            "subnet-ipv4-cidr-block": "10.0.0.0/24",
                            "vpc-id": "vpc-0123456789abcdef0",
                            "vpc-ipv4-cidr-block": "10.0.0.0/16",
                            "vpc-ipv4-cidr-blocks": "10.0.0.0/16",
                        }
                    }
                }
            },
            "placement": {
                "availability-zone": ident.availability_zone,
                "region": ident.region,
            },
            "iam": {
                "info": lambda: json.dumps(
                    {
                        "Code": "Success",
                        "InstanceProfileArn": f"arn:aws:iam::{ident.account_id}:"
                        f"instance-profile/{ident.role_name}",
                        "InstanceProfileId": "AIPAEXAMPLE",
                    }
                ),
                "security-credentials": {ident.role_name: lambda: _document(creds())},
            },
        },
        "dynamic": {"instance-identity": {"document": json.dumps(doc)}},
    }


def _document(creds: dict[str, Any] | str) -> str:
    """The credentials document; a str is served as it is (tests serve malformed ones)."""
    return creds if isinstance(creds, str) else json.dumps(creds)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    # http.server writes headers and body separately; without this, Nagle holds the body back
    # until the client's delayed ACK: ~40 ms on every reused keep-alive connection.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib's name
        return

    def _send(self, status: int, body: str | bytes = b"", ctype: str = "text/plain") -> None:
        st = self.server.state
        with st.lock:
            st.hits.append(Hit(self.command, self.path, status))
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        faults = st.faults
        if faults.trickle > 0:
            if not write_slowly(self.wfile, data, faults.trickle, faults.trickle_for):
                self.close_connection = True
        else:
            self.wfile.write(data)

    def _gate(self) -> bool:
        """Apply faults; False when the connection was dropped."""
        faults = self.server.state.faults
        if time.monotonic() < faults.unavailable_until:
            with self.server.state.lock:
                self.server.state.hits.append(Hit(self.command, self.path, 0))
            self.close_connection = True
            self.connection.close()
            return False
        if faults.latency:
            time.sleep(faults.latency)
        return True

    def do_PUT(self) -> None:  # noqa: N802 - http.server's naming
        if not self._gate():
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        if not self.path.startswith("/latest/api/token"):
            self._send(405)
            return
        if self.headers.get("X-Forwarded-For") is not None or self.server.state.faults.refuse_token:
            self._send(403, "Forbidden")
            return
        try:
            ttl = int(self.headers.get(TTL_HEADER, ""))
        except ValueError:
            self._send(400, "missing or invalid token TTL")
            return
        if not 1 <= ttl <= 21600:
            self._send(400, "token TTL out of range")
            return
        token = secrets.token_urlsafe(32)
        with self.server.state.lock:
            self.server.state.tokens[token] = time.monotonic() + ttl
        self._send(200, token)

    def do_GET(self) -> None:  # noqa: N802
        if not self._gate():
            return
        st = self.server.state
        if self.path.startswith("/latest/api/token"):
            self._send(405)
            return
        token = self.headers.get(TOKEN_HEADER, "")
        with st.lock:
            expiry = st.tokens.get(token)
        if expiry is None or expiry < time.monotonic():
            self._send(401, "Unauthorized")
            return
        if st.faults.redirect:
            with st.lock:
                st.hits.append(Hit(self.command, self.path, 302))
            self.send_response(302)
            self.send_header("Location", st.faults.redirect.rstrip("/") + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        match = _VERSION_RE.match(self.path.split("?", 1)[0])
        if not match:
            self._send(404, "Not Found")
            return
        rest = (match.group(2) or "/").lstrip("/")
        if rest == "":
            self._send(200, "dynamic\nmeta-data\nuser-data\n")
            return
        if rest == "user-data":
            if st.identity.user_data is None:
                self._send(404, "Not Found")
            else:
                self._send(200, st.identity.user_data, "application/octet-stream")
            return
        if rest.startswith("meta-data/iam/security-credentials") and (
            time.monotonic() < st.faults.no_role_until
        ):
            self._send(404, "Not Found")
            return
        node: Any = _tree(st.identity, st.credentials)
        for part in [p for p in rest.split("/") if p]:
            if not isinstance(node, dict) or part not in node:
                self._send(404, "Not Found")
                return
            node = node[part]
        if isinstance(node, dict):
            listing = [f"{k}/" if isinstance(v, dict) else k for k, v in node.items()]
            self._send(200, "\n".join(listing))
        else:
            self._send(200, node() if callable(node) else node)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: _State


class ImdsEmulator(Background):
    """Serve the emulator on a thread; ``hits`` records every request."""

    def __init__(
        self,
        identity: Identity,
        credentials: Callable[[], dict[str, Any] | str],
        host: str = "127.0.0.1",
        port: int = 0,
    ):
        server = _Server((host, port), _Handler)
        server.state = _State(identity=identity, credentials=credentials)
        super().__init__(server)
        self.server: _Server = server

    @property
    def faults(self) -> Faults:
        return self.server.state.faults

    @property
    def identity(self) -> Identity:
        return self.server.state.identity

    @property
    def hits(self) -> list[Hit]:
        with self.server.state.lock:
            return list(self.server.state.hits)

    def clear(self) -> None:
        with self.server.state.lock:
            self.server.state.hits.clear()
            self.server.state.tokens.clear()
        self.server.state.faults = Faults()


def main(argv: list[str] | None = None) -> int:
    """Serve the emulator in the foreground with credentials read from a JSON file."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--credentials", required=True, help="JSON file as IMDS serves it")
    parser.add_argument("--instance-id", default=Identity.instance_id)
    parser.add_argument("--region", default=Identity.region)
    parser.add_argument("--role", default=Identity.role_name)
    parser.add_argument("--port-file", help="write the bound port here once listening")
    args = parser.parse_args(argv)
    with open(args.credentials) as fh:
        creds = json.load(fh)
    ident = Identity(
        instance_id=args.instance_id,
        region=args.region,
        availability_zone=f"{args.region}a",
        role_name=args.role,
    )
    emu = ImdsEmulator(ident, lambda: creds, args.host, args.port)
    if args.port_file:
        with open(args.port_file, "w") as fh:
            fh.write(str(emu.server.server_address[1]))
    with contextlib.suppress(KeyboardInterrupt):
        emu.server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
