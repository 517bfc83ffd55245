"""The hostile-input matrix: each row is run by test_matrix.py and printed in README.md.

``python scripts/fault_table.py --write`` regenerates README's table from these rows.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from dataclasses import dataclass
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText


@dataclass(frozen=True)
class Row:
    """One hostile user data, what the boothook hand-off (agent and fallback) does, its exit."""

    what: str
    data: Callable[[], bytes]
    outcome: str
    exit_code: int


def _mime(*parts: tuple[str, str, str | None]) -> bytes:
    outer = MIMEMultipart()
    for subtype, body, name in parts:
        part = MIMEText(body, subtype)
        if name is not None:
            part.add_header("Content-Disposition", "attachment", filename=name)
        outer.attach(part)
    return outer.as_bytes()


def _gz_part(body: bytes, layers: int) -> bytes:
    for _ in range(layers):
        body = gzip.compress(body, 9)
    outer = MIMEMultipart()
    outer.attach(MIMEApplication(body, "gzip"))
    return outer.as_bytes()


def _nested(levels: int) -> bytes:
    inner = "Content-Type: text/x-shellscript\n\n#!/bin/sh\n"
    for i in range(levels):
        inner = (
            f'Content-Type: multipart/mixed; boundary="b{i}"\nMIME-Version: 1.0\n\n'
            f"--b{i}\n{inner}\n--b{i}--\n"
        )
    return inner.encode()


def _launch_index() -> bytes:
    outer = MIMEMultipart()
    part = MIMEText("#cloud-config\n", "cloud-config")
    part.add_header("Launch-Index", "3")
    outer.attach(part)
    return outer.as_bytes()


BOMB = b"#cloud-config\n" + b"\0" * (32 << 20)
REFUSED = "refused before any delete; fragments kept"

ROWS = [
    Row(
        "gzip bomb in an `application/gzip` part (32 MiB from a few KB)",
        lambda: _gz_part(BOMB, 1),
        "refused at `--max-size` over all layers; memory bounded",
        6,
    ),
    Row(
        "gzip in gzip in a part",
        lambda: _gz_part(b"#cloud-config\n", 2),
        REFUSED + " (cloud-init decompresses one layer only)",
        11,
    ),
    Row(
        "raw gzip bytes in a `text/plain` part",
        lambda: _mime(("plain", gzip.compress(b"#!/bin/sh\n").decode("latin-1"), None)),
        REFUSED + " (cloud-init ignores it)",
        11,
    ),
    Row(
        "script named `install.cloud-config.sh`",
        lambda: _mime(("plain", "#!/bin/sh\necho hi\n", "install.cloud-config.sh")),
        "placed as a script: the kind comes from the part, never the name",
        0,
    ),
    Row(
        "boothook named `early.script.sh`",
        lambda: _mime(("plain", "#cloud-boothook\n#!/bin/sh\n:\n", "early.script.sh")),
        "run as a boothook",
        0,
    ),
    Row(
        "part file name with `%0A` (RFC 2231), ESC, a secret",
        lambda: _mime(("x-shellscript", "#!/bin/sh\n", "a\nb\x1b[2Jsecret")),
        "placed under cloud-init's cleaned name; logs show index, kind, size only",
        0,
    ),
    Row(
        '`"merge_how":`, `{merge_how: ...}`, `? merge_how`, `"\\x6derge_how"`',
        lambda: b'#cloud-config\n{merge_how: "list(append)"}\n',
        REFUSED,
        11,
    ),
    Row(
        "`#cloud-config-ARCHIVE` (any case)",
        lambda: b"#cloud-config-ARCHIVE\n- {}\n",
        REFUSED + " (cloud-init lowercases markers)",
        11,
    ),
    Row(
        "`Content-Type: text/x-shellscript` without `MIME-Version`",
        lambda: b"Content-Type: text/x-shellscript\n\n#!/bin/sh\n",
        REFUSED + " (not MIME for cloud-init)",
        11,
    ),
    Row("MIME nested 3,000 levels", lambda: _nested(3000), REFUSED, 11),
    Row(
        "`Launch-Index` header",
        _launch_index,
        REFUSED + " (cloud-init filters parts by it)",
        11,
    ),
    Row(
        "101 cloud-config parts",
        lambda: _mime(*[("cloud-config", "#cloud-config\n", None)] * 101),
        "placed as `99-sealboot-000.cfg`..`-100.cfg`, sorting in part order",
        0,
    ),
]


def markdown_table() -> str:
    rows = ["| hostile user data | outcome | exit |", "|---|---|---|"]
    rows += [f"| {r.what} | {r.outcome} | {r.exit_code} |" for r in ROWS]
    return "\n".join(rows) + "\n"
