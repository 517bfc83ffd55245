"""The IMDSv2 client against a scripted local HTTP server: deadline, caps, redirects, checks."""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from sealboot_agent.cli import main
from sealboot_agent.errors import ImdsError
from sealboot_agent.imds import MAX_BODY, Deadline, Imds
from sealboot_agent.wire import Manifest
from tests.stack.imds import Identity, ImdsEmulator

TOKEN = "AQAEAFake-token_Value=="
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYSECRETKEY"
FUTURE = "2099-01-01T00:00:00Z"


def creds(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "Code": "Success",
        "Type": "AWS-HMAC",
        "AccessKeyId": "ASIAFAKEFAKEFAKE1234",
        "SecretAccessKey": SECRET,
        "Token": "IQoJb3JpZ2luX2VjEFAKE/session+token==",
        "Expiration": FUTURE,
    }
    doc.update(over)
    return {k: v for k, v in doc.items() if v is not ...}


@dataclass
class Answer:
    """One scripted answer; *every* > 0 sends the body a byte at a time."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    length: int | None = None  # the Content-Length to declare (default: the body's)
    chunked: bool = False
    every: float = 0.0


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


class Script:
    """What the server answers, per (method, path): a list used in turn, the last one repeated."""

    def __init__(self) -> None:
        self.answers: dict[tuple[str, str], list[Answer]] = {
            ("PUT", "/latest/api/token"): [Answer(body=TOKEN.encode())],
            ("GET", "/latest/meta-data/instance-id"): [Answer(body=b"i-0123456789abcdef0")],
            ("GET", "/latest/meta-data/placement/region"): [Answer(body=b"eu-west-1")],
            ("GET", "/latest/meta-data/iam/security-credentials/"): [Answer(body=b"node-role")],
            ("GET", "/latest/meta-data/iam/security-credentials/node-role"): [
                Answer(body=json.dumps(creds()).encode())
            ],
        }
        self.seen: list[Seen] = []
        self.url = ""

    def set(self, method: str, path: str, *answers: Answer) -> None:
        self.answers[(method, "/latest/" + path)] = list(answers)

    def next(self, method: str, path: str) -> Answer:
        queue = self.answers.get((method, path))
        if not queue:
            return Answer(status=404, body=b"Not Found")
        return queue.pop(0) if len(queue) > 1 else queue[0]


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib's name
        return

    def _answer(self) -> None:
        script = self.server.script
        script.seen.append(Seen(self.command, self.path, dict(self.headers)))
        ans = script.next(self.command, self.path)
        self.send_response(ans.status)
        for key, value in ans.headers.items():
            self.send_header(key, value)
        if ans.chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            length = len(ans.body) if ans.length is None else ans.length
            self.send_header("Content-Length", str(length))
        self.end_headers()
        try:
            if ans.chunked:
                for start in range(0, len(ans.body), 8192):
                    piece = ans.body[start : start + 8192]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.write(b"0\r\n\r\n")
            elif ans.every:
                end = time.monotonic() + 10  # bounded: the thread always ends by itself
                for i in range(len(ans.body)):
                    if time.monotonic() > end:
                        break
                    self.wfile.write(ans.body[i : i + 1])
                    self.wfile.flush()
                    time.sleep(ans.every)
            else:
                self.wfile.write(ans.body)
        except OSError:
            pass
        if ans.length is not None and ans.length != len(ans.body):
            self.close_connection = True

    do_GET = _answer  # noqa: N815 - http.server's naming
    do_PUT = _answer  # noqa: N815


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    script: Script


def _serve(script: Script) -> Iterator[_Server]:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.script = script
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def script() -> Iterator[Script]:
    s = Script()
    for server in _serve(s):
        host, port = server.server_address[:2]
        s.url = f"http://{host!s}:{port}"
        yield s


def imds(script: Script, seconds: float = 5.0) -> Imds:
    return Imds(script.url, requests.Session(), Deadline(seconds))


def refused(call: Any) -> str:
    with pytest.raises(ImdsError) as info:
        call()
    message = info.value.message
    assert "\x1b" not in message
    assert "\n" not in message
    return message


# --- reading answers -------------------------------------------------------------------------


def test_reads_identity_and_credentials(script: Script) -> None:
    client = imds(script)
    assert client.instance_id() == "i-0123456789abcdef0"
    assert client.region() == "eu-west-1"
    got = client.role_credentials()
    assert (got.role, got.secret_key, got.expiry_time) == ("node-role", SECRET, FUTURE)


def test_token_is_asked_for_once_and_sent_with_every_get(script: Script) -> None:
    client = imds(script)
    client.instance_id()
    client.region()
    puts = [s for s in script.seen if s.method == "PUT"]
    gets = [s for s in script.seen if s.method == "GET"]
    assert len(puts) == 1
    assert puts[0].headers["X-aws-ec2-metadata-token-ttl-seconds"] == "21600"
    assert [g.headers["X-aws-ec2-metadata-token"] for g in gets] == [TOKEN, TOKEN]


def test_chunked_answer_is_read_whole(script: Script) -> None:
    script.set("GET", "meta-data/placement/region", Answer(body=b"eu-west-1", chunked=True))
    assert imds(script).region() == "eu-west-1"


def test_trickled_answer_stops_at_the_deadline(script: Script) -> None:
    script.set("GET", "meta-data/instance-id", Answer(body=b"i-0123456789abcdef0", every=0.2))
    started = time.monotonic()
    message = refused(imds(script, seconds=1.0).instance_id)
    assert time.monotonic() - started < 1.6
    assert "still arriving" in message


def test_answer_cut_off_mid_body_is_retried(script: Script) -> None:
    script.set(
        "GET",
        "meta-data/instance-id",
        Answer(body=b"i-0123", length=19),
        Answer(body=b"i-0123456789abcdef0"),
    )
    assert imds(script).instance_id() == "i-0123456789abcdef0"


def test_oversized_answer_is_refused_before_reading_it(script: Script) -> None:
    script.set("GET", "meta-data/instance-id", Answer(body=b"i", length=MAX_BODY + 1))
    started = time.monotonic()
    message = refused(imds(script).instance_id)
    assert time.monotonic() - started < 1.0
    assert f"{MAX_BODY + 1} bytes" in message


def test_oversized_answer_without_length_is_cut_at_the_cap(script: Script) -> None:
    script.set("GET", "meta-data/instance-id", Answer(body=b"i" * (MAX_BODY * 4), chunked=True))
    assert f"over {MAX_BODY} bytes" in refused(imds(script).instance_id)


def test_answer_that_is_not_utf8_is_refused(script: Script) -> None:
    script.set("GET", "meta-data/placement/region", Answer(body=b"eu-west-\xff\xfe"))
    assert "not UTF-8" in refused(imds(script).region)


def test_compressed_answer_is_refused(script: Script) -> None:
    script.set(
        "GET", "meta-data/instance-id", Answer(body=b"x", headers={"Content-Encoding": "gzip"})
    )
    assert "Content-Encoding" in refused(imds(script).instance_id)


# --- the token -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [b"", b"tok\r\nX-Evil: 1", b"tok en", b"tok\x00", "tök".encode(), b"t" * 5000],
    ids=["empty", "crlf", "space", "nul", "non-ascii", "too-long"],
)
def test_malformed_token_is_refused_and_never_sent(script: Script, body: bytes) -> None:
    script.set("PUT", "api/token", Answer(body=body))
    assert "malformed token" in refused(imds(script).instance_id)
    assert not [s for s in script.seen if s.method == "GET"]


def test_refused_token_request_names_the_url(script: Script) -> None:
    script.set("PUT", "api/token", Answer(status=403, body=b"Forbidden"))
    message = refused(imds(script).instance_id)
    assert f"PUT {script.url}/latest/api/token answered HTTP 403" in message


def test_unreachable_imds_names_the_url_and_the_reason() -> None:
    client = Imds("http://127.0.0.1:9", requests.Session(), Deadline(0.5))
    message = refused(client.token)
    assert message.startswith("no IMDSv2 token before the deadline from PUT ")
    assert "http://127.0.0.1:9/latest/api/token: ConnectionError" in message


# --- redirects -------------------------------------------------------------------------------


@pytest.fixture
def elsewhere() -> Iterator[Script]:
    """Another server, to see whether anything followed a redirect to it."""
    s = Script()
    for server in _serve(s):
        host, port = server.server_address[:2]
        s.url = f"http://{host!s}:{port}"
        yield s


def test_redirected_get_is_not_followed(script: Script, elsewhere: Script) -> None:
    target = elsewhere.url + "/latest/meta-data/instance-id"
    script.set("GET", "meta-data/instance-id", Answer(status=302, headers={"Location": target}))
    message = refused(imds(script).instance_id)
    assert "redirect (HTTP 302)" in message
    assert elsewhere.seen == [], "the token went to another server"


def test_redirected_token_request_is_not_followed(script: Script, elsewhere: Script) -> None:
    target = elsewhere.url + "/latest/api/token"
    script.set("PUT", "api/token", Answer(status=307, headers={"Location": target}))
    assert "redirect (HTTP 307)" in refused(imds(script).token)
    assert elsewhere.seen == []


# --- what the answers say --------------------------------------------------------------------


@pytest.mark.parametrize("value", ["i-01234567", "i-0123456789abcdef0", " i-0abcdef12\n"])
def test_plausible_instance_ids_are_accepted(script: Script, value: str) -> None:
    script.set("GET", "meta-data/instance-id", Answer(body=value.encode()))
    assert imds(script).instance_id() == value.strip()


@pytest.mark.parametrize(
    "value",
    ["", "../../x", "i-0123/../../x", "i-XYZ12345", "i-0123456", "i-" + "0" * 18, "i-0123\x1b[31m"],
)
def test_implausible_instance_ids_are_refused(script: Script, value: str) -> None:
    script.set("GET", "meta-data/instance-id", Answer(body=value.encode()))
    assert "not an EC2 instance id" in refused(imds(script).instance_id)


@pytest.mark.parametrize("value", ["", "../x", "eu-west-1\x1b[2J", "EU-WEST-1", "x" * 5000])
def test_malformed_regions_are_refused(script: Script, value: str) -> None:
    script.set("GET", "meta-data/placement/region", Answer(body=value.encode()))
    assert "not an AWS region name" in refused(imds(script).region)


def test_escapes_what_it_quotes(script: Script) -> None:
    script.set("GET", "meta-data/instance-id", Answer(body=b"i-\x1b]0;owned\x07"))
    assert "\\x1b]0;owned\\x07" in refused(imds(script).instance_id)


@pytest.mark.parametrize("role", ["a/b", "..", "role\x07", "r" * 65, "r\u00f6le"])
def test_malformed_role_names_are_refused_before_use(script: Script, role: str) -> None:
    script.set("GET", "meta-data/iam/security-credentials/", Answer(body=role.encode()))
    assert "not an IAM role name" in refused(imds(script).role_credentials)
    assert len(script.seen) == 2  # the token and the listing; nothing built from the name


def _serve_creds(script: Script, body: str) -> None:
    script.set("GET", "meta-data/iam/security-credentials/node-role", Answer(body=body.encode()))


@pytest.mark.parametrize(
    ("doc", "says"),
    [
        ("{not json", "not JSON"),
        ("[" * 10_000 + "]" * 10_000, "not JSON"),
        ('["AccessKeyId"]', "not a JSON object"),
        (json.dumps(creds(AccessKeyId=12345678901234567890)), "AccessKeyId is a JSON int"),
        (json.dumps(creds(SecretAccessKey=None)), "SecretAccessKey is missing or null"),
        (json.dumps(creds(Token=["a", "b"])), "Token is a JSON list"),
        (json.dumps(creds(Token=...)), "Token is missing"),
        (json.dumps(creds(Token="line\r\nX-Evil: 1")), "characters, not all of them allowed"),
        (json.dumps(creds(Expiration=1767225600)), "Expiration is a JSON int"),
        (json.dumps(creds(Expiration="tomorrow")), "is not an ISO 8601 time"),
        (json.dumps(creds(Code="AssumeRoleUnauthorizedAccess")), "AssumeRoleUnauthorizedAccess"),
    ],
    ids=[
        "not-json",
        "deeply-nested",
        "list",
        "number",
        "null",
        "token-list",
        "token-missing",
        "token-crlf",
        "expiration-number",
        "expiration-text",
        "code",
    ],
)
def test_malformed_credentials_are_refused(script: Script, doc: str, says: str) -> None:
    _serve_creds(script, doc)
    assert says in refused(imds(script).role_credentials)


def test_malformed_credentials_never_show_the_secret(script: Script) -> None:
    _serve_creds(script, json.dumps(creds(SecretAccessKey=SECRET + "\n")))
    assert SECRET not in refused(imds(script).role_credentials)


def test_expired_credentials_are_refused(script: Script) -> None:
    _serve_creds(script, json.dumps(creds(Expiration="2020-01-01T00:00:00Z")))
    message = refused(imds(script).role_credentials)
    assert "expired at 2020-01-01T00:00:00Z" in message


# --- the exit code of the real CLI -----------------------------------------------------------

MANIFEST = Manifest(
    backend="secrets-manager",
    format="native",
    fragments=("aws.cluster.x-k8s.io/ns/c1/m1/tok-0",),
    sha256=hashlib.sha256(b"s").hexdigest(),
    labels={"namespace": "ns", "cluster": "c1", "machine": "m1"},
)


_VALID = creds()


@pytest.mark.parametrize(
    ("identity", "document", "says"),
    [
        (Identity(instance_id="../../x"), _VALID, "not an EC2 instance id"),
        (Identity(region="eu-west-1\x1b[31m"), _VALID, "not an AWS region name"),
        (Identity(region="x" * (MAX_BODY + 1)), _VALID, "no IMDS answer is over"),
        (Identity(role_name="a\x07b"), _VALID, "not an IAM role name"),
        (Identity(), creds(Expiration="2020-01-01T00:00:00Z"), "expired at"),
        (Identity(), creds(AccessKeyId=1234567890123456), "AccessKeyId is a JSON int"),
        (Identity(), creds(Token=None), "Token is missing or null"),
        (Identity(), "{not json", "are not JSON"),
    ],
    ids=[
        "instance-id",
        "region",
        "over-long",
        "role",
        "expired",
        "number",
        "null",
        "not-json",
    ],
)
@pytest.mark.usefixtures("restore_process_state")
def test_bad_imds_answers_exit_3(
    tmp_path: Path, identity: Identity, document: dict[str, Any] | str, says: str
) -> None:
    with ImdsEmulator(identity, lambda: document) as emulator:
        err = io.StringIO()
        argv = ["fetch", "--manifest", MANIFEST.to_json(), "--root", str(tmp_path)]
        # Never AWS itself, should a bad answer get through.
        argv += ["--endpoint-url", "http://127.0.0.1:9"]
        env = {"SEALBOOT_IMDS_ENDPOINT": emulator.url, "SEALBOOT_DEADLINE": "5"}
        code = main([*argv, "--log-file", "-"], env, io.StringIO(), err)
    assert code == 3, err.getvalue()
    assert says in err.getvalue()
    assert "\x1b" not in err.getvalue()
    assert "\x07" not in err.getvalue()
