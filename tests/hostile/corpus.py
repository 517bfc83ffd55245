"""User data that cloud-init and sealboot's ``userdata.split`` must read alike: a fixed corpus.

Hand-written edge cases (markers, gzip layers, MIME quirks, file names, merges, launch indexes,
transfer encodings, charsets, nesting, many parts) plus :func:`generated` MIME combinations of
the same building blocks from a seeded generator, so every run sees the same bytes.
``tests/e2e/test_oracle.py`` runs all of them through each release's cloud-init.

Every distinctive string a case carries (payload text, file names, custom content types)
contains ``oracle``, so a refusal message that repeats user data is caught by one search.
"""

from __future__ import annotations

import base64
import gzip
import io
import quopri
import random
from dataclasses import dataclass

MARK = "oracle"
# Where the e2e probe layer puts a file an '#include' can read without any network.
INCLUDE_TARGET = "/opt/sealboot-oracle/include-target"
INCLUDE_BODY = b"#cloud-config\nruncmd: [[echo, oracle-included]]\n"


@dataclass(frozen=True)
class Case:
    """One user data; *expect* is sealboot's required verdict where the policy is settled."""

    name: str
    data: bytes
    expect: str | None = None  # "accept", "refuse" or None (the oracle alone judges)


def gz(data: bytes, *, mtime: int = 0) -> bytes:
    """Deterministic gzip (no time or file name in the header)."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=mtime, filename="") as f:
        f.write(data)
    return buf.getvalue()


CC = b"#cloud-config\nruncmd: [[echo, oracle-cc]]\n"
SCRIPT = b"#!/bin/sh\necho oracle-script\n"
BOOTHOOK = b"#cloud-boothook\n#!/bin/sh\necho oracle-boothook\n"
PLAIN = b"echo oracle-no-marker\n"

# Every start marker cloud-init knows (handlers.INCLUSION_TYPES_MAP, 20.4 to 25.1).
MARKERS: dict[str, bytes] = {
    "cloud-config": CC,
    "script": SCRIPT,
    "boothook": BOOTHOOK,
    "include": f"#include {INCLUDE_TARGET}\n".encode(),
    "include-once": b"#include-once file:///nonexistent/oracle-include-once\n",
    "part-handler": b"#part-handler\ndef list_types():\n    return ['text/x-oracle']\n",
    "cloud-config-archive": b"#cloud-config-archive\n- content: '#!/bin/sh\n\n    echo oracle'\n",
    "cloud-config-jsonp": b'#cloud-config-jsonp\n[{"op": "add", "path": "/oracle", "value": 1}]\n',
    "upstart-job": b"#upstart-job\ndescription 'oracle'\n",
    "jinja": b"## template: jinja\n#cloud-config\nruncmd: [[echo, 'oracle {{ v1.region }}']]\n",
    "per-boot": b"text/x-shellscript-per-boot\n#!/bin/sh\necho oracle\n",
    "per-instance": b"text/x-shellscript-per-instance\n#!/bin/sh\necho oracle\n",
    "per-once": b"text/x-shellscript-per-once\n#!/bin/sh\necho oracle\n",
}

_RUN = b"runcmd: [[echo, oracle]]\n"
_LA = b"'list(append)+dict()+str()'"


def _cc(body: bytes) -> bytes:
    """A cloud-config: the marker, *body*, then a runcmd."""
    return b"#cloud-config\n" + body + b"\n" + _RUN


# merge_how / merge_type in every spelling YAML allows, and one that only mentions it.
MERGES: dict[str, bytes] = {
    "block": _cc(b"merge_how:\n - name: list\n   settings: [append]"),
    "string": _cc(b"merge_how: 'list(append)+dict(recurse_array)+str()'"),
    "type": _cc(b"merge_type: " + _LA),
    "flow": b"#cloud-config\n{merge_how: [{name: list, settings: [append]}], runcmd: [oracle]}\n",
    "quoted": _cc(b'"merge_how": ' + _LA),
    "single-quoted": _cc(b"'merge_how': " + _LA),
    "complex-key": _cc(b"? merge_how\n: " + _LA),
    "hex-escape": _cc(b'"merge\\x5fhow": ' + _LA),
    "unicode-escape": _cc(b'"merge\\u005fhow": ' + _LA),
    "folded-key": _cc(b'? "merge_\\\n  how"\n: ' + _LA),
    "anchor": _cc(b"k: &k merge_how\n*k : " + _LA),
    "merge-key": _cc(b"<<: {merge_how: " + _LA + b"}"),
    "default-spelled": _cc(b"merge_how: 'dict(replace)+list()+str()'"),
    "in-a-value": _cc(b"x: [[echo, 'merge_how oracle']]"),
}

LAUNCH_INDEX: dict[str, bytes] = {
    "zero": b"#cloud-config\nlaunch-index: 0\nruncmd: [[echo, oracle]]\n",
    "one": b"#cloud-config\nlaunch-index: 1\nruncmd: [[echo, oracle]]\n",
    "quoted-one": b'#cloud-config\n"launch-index": 1\nruncmd: [[echo, oracle]]\n',
    "escaped-one": b'#cloud-config\n"launch\\x2dindex": 1\nruncmd: [[echo, oracle]]\n',
}


# --- MIME, written by hand so that every quirk stays exactly as written ----------------------


_boundaries = iter(range(1, 1 << 30))


def _boundary() -> str:
    return f"==oracle-boundary-{next(_boundaries)}=="


def encode_body(body: bytes, cte: str | None) -> bytes:
    """*body* in Content-Transfer-Encoding *cte* (None or 7bit/8bit: as it is)."""
    if cte == "base64":
        return base64.encodebytes(body)
    if cte == "quoted-printable":
        return quopri.encodestring(body)
    return body


def part(
    ctype: str,
    body: bytes,
    *,
    filename: str | None = None,
    cte: str | None = None,
    headers: tuple[str, ...] = (),
    disposition: str | None = None,
) -> bytes:
    """One MIME part: headers, a blank line, the body in its transfer encoding."""
    lines = [f"Content-Type: {ctype}"]
    if cte is not None:
        lines.append(f"Content-Transfer-Encoding: {cte}")
    if disposition is not None:
        lines.append(f"Content-Disposition: {disposition}")
    elif filename is not None:
        lines.append(f'Content-Disposition: attachment; filename="{filename}"')
    lines.extend(headers)
    return "\n".join(lines).encode() + b"\n\n" + encode_body(body, cte)


def container(parts: list[bytes], *, subtype: str = "mixed", preamble: bytes = b"") -> bytes:
    """A multipart/* part around already-built parts (for nesting)."""
    b = _boundary()
    out = f'Content-Type: multipart/{subtype}; boundary="{b}"\n\n'.encode() + preamble
    for p in parts:
        out += f"--{b}\n".encode() + p + b"\n"
    return out + f"--{b}--\n".encode()


def multipart(
    parts: list[bytes],
    *,
    version: bool = True,
    subtype: str = "mixed",
    preamble: bytes = b"",
    newline: bytes = b"\n",
) -> bytes:
    """A top-level multipart message (with MIME-Version when *version*) around *parts*."""
    out = (b"MIME-Version: 1.0\n" if version else b"") + container(
        parts, subtype=subtype, preamble=preamble
    )
    return out.replace(b"\n", newline)


def single(
    ctype: str, body: bytes, *, cte: str | None = None, filename: str | None = None
) -> bytes:
    """A top-level MIME message that is not multipart."""
    return b"MIME-Version: 1.0\n" + part(ctype, body, cte=cte, filename=filename)


def nested(depth: int, leaf: bytes) -> bytes:
    """*leaf* inside *depth* multipart/mixed containers below the top-level message."""
    inner = leaf
    for _ in range(depth):
        inner = container([inner])
    return multipart([inner])


# --- the hand-written cases ------------------------------------------------------------------


def _plain_cases() -> list[Case]:
    cases = [
        Case("plain-cloud-config", CC, "accept"),
        Case("plain-script", SCRIPT, "accept"),
        Case("plain-boothook", BOOTHOOK, "accept"),
        Case("mixed-case-cloud-config", b"#Cloud-Config\nruncmd: [[echo, oracle]]\n", "accept"),
        Case("upper-case-script", b"#!/BIN/SH\necho oracle\n"),
        Case("upper-case-boothook", b"#CLOUD-BOOTHOOK\necho oracle\n"),
        Case("cloud-config-ARCHIVE", b"#cloud-config-ARCHIVE\n- '#!/bin/sh\n\n  echo oracle'\n"),
        Case("leading-spaces-cloud-config", b"   #cloud-config\nruncmd: [oracle]\n"),
        Case("leading-newlines-script", b"\n\n\t#!/bin/sh\necho oracle\n"),
        Case("leading-crlf-boothook", b"\r\n #cloud-boothook\r\necho oracle\r\n"),
        Case("leading-nbsp-cloud-config", "\u00a0#cloud-config\nruncmd: [oracle]\n".encode()),
        Case("bom-cloud-config", "\ufeff#cloud-config\nruncmd: [oracle]\n".encode()),
        Case("jinja-template", MARKERS["jinja"], "refuse"),
        Case("jinja-template-upper", b"## Template: Jinja\n#!/bin/sh\necho oracle\n", "refuse"),
        Case("include", MARKERS["include"], "refuse"),
        Case("include-missing-file", b"#include\nfile:///nonexistent/oracle-include\n", "refuse"),
        Case("include-once", MARKERS["include-once"], "refuse"),
        Case("include-upper", f"#INCLUDE {INCLUDE_TARGET}\n".encode(), "refuse"),
        Case("part-handler", MARKERS["part-handler"], "refuse"),
        Case("cloud-config-jsonp", MARKERS["cloud-config-jsonp"], "refuse"),
        Case("upstart-job", MARKERS["upstart-job"], "refuse"),
        Case("cloud-config-archive", MARKERS["cloud-config-archive"], "refuse"),
        Case("per-boot-marker", MARKERS["per-boot"], "refuse"),
        Case("per-instance-marker", MARKERS["per-instance"], "refuse"),
        Case("per-once-marker", MARKERS["per-once"], "refuse"),
        Case("no-marker", PLAIN, "refuse"),
        Case("empty", b"", "refuse"),
        Case("whitespace-only", b" \n\t\n", "refuse"),
        Case("non-utf8-script", b"#!/bin/sh\necho oracle-\xff\xfe\n"),
        Case("non-utf8-cloud-config", b"#cloud-config\nruncmd: [[echo, oracle-\xe9]]\n"),
        Case("non-utf8-start", b"\xff\xfe#!/bin/sh\necho oracle\n"),
        Case("non-ascii-script", "#!/bin/sh\necho oracle-é-€-🙂\n".encode()),
        Case("crlf-script", b"#!/bin/sh\r\necho oracle-crlf\r\n"),
        Case("crlf-cloud-config", b"#cloud-config\r\nruncmd: [[echo, oracle-crlf]]\r\n"),
        Case("nul-in-script", b"#!/bin/sh\necho oracle\x00\n"),
        Case("shebang-only", b"#!"),
        Case("cloud-config-only-marker", b"#cloud-config"),
        Case("cloud-config-not-a-dict", b"#cloud-config\n[oracle, 1]\n"),
        Case("cloud-config-bad-yaml", b"#cloud-config\nruncmd: [oracle\n  - ]: :\n"),
        Case("cloud-config-runcmd", b"#cloud-config\nruncmd:\n - echo oracle-runcmd\n"),
        Case(
            "lone-content-type-header",
            b"Content-Type: text/x-shellscript\n\n#!/bin/sh\necho oracle\n",
            "refuse",
        ),
        Case(
            "multipart-without-mime-version",
            multipart([part("text/x-shellscript", SCRIPT)], version=False),
            "refuse",
        ),
        Case(
            "mime-version-in-a-script-comment",
            b"#!/bin/sh\n# MIME-Version: 1.0\necho oracle\n",
        ),
        Case(
            "mime-version-after-4096-bytes",
            b"#!/bin/sh\n" + b"#" * 4100 + b"\n# MIME-Version: 1.0\necho oracle\n",
        ),
        Case(
            "mime-version-straddles-4096",
            b"#!/bin/sh\n" + b"#" * 4080 + b"\nMIME-Version: 1.0\necho oracle\n",
        ),
        Case(
            "mime-version-lowercase",
            b"mime-version: 1.0\ncontent-type: text/x-shellscript\n\n" + SCRIPT,
        ),
    ]
    for name, body in MERGES.items():
        cases.append(Case(f"merge-{name}", body))
    for name, body in LAUNCH_INDEX.items():
        cases.append(Case(f"launch-index-{name}", body))
    return cases


def _gzip_cases() -> list[Case]:
    good = gz(CC)
    return [
        Case("gzip-cloud-config", gz(CC), "accept"),
        Case("gzip-script", gz(SCRIPT), "accept"),
        Case("gzip-boothook", gz(BOOTHOOK), "accept"),
        Case("gzip-mime", gz(multipart([part("text/x-shellscript", SCRIPT)])), "accept"),
        Case("gzip-in-gzip", gz(gz(CC)), "refuse"),
        Case("gzip-no-marker", gz(PLAIN), "refuse"),
        Case("gzip-non-utf8", gz(b"#!/bin/sh\necho oracle-\xff\n")),
        Case("gzip-non-ascii", gz("#!/bin/sh\necho oracle-é-€\n".encode())),
        Case("gzip-corrupt-crc", good[:-8] + bytes([good[-8] ^ 0xFF]) + good[-7:], "refuse"),
        Case("gzip-corrupt-deflate", good[:12] + b"\xff\xff\xff" + good[15:], "refuse"),
        Case("gzip-truncated", good[: len(good) // 2], "refuse"),
        Case("gzip-header-only", good[:10], "refuse"),
        Case("gzip-magic-only", b"\x1f\x8b", "refuse"),
        Case("gzip-trailing-garbage", good + b"oracle", "refuse"),
        Case("gzip-trailing-nuls", good + b"\x00" * 8),
        Case("gzip-two-members", gz(b"#cloud-config\n") + gz(b"runcmd: [[echo, oracle]]\n")),
        Case("gzip-empty", gz(b""), "refuse"),
    ]


def _mime_cases() -> list[Case]:
    mp = multipart
    cases = [
        Case("mime-cloud-config", mp([part("text/cloud-config", CC)]), "accept"),
        Case("mime-script", mp([part("text/x-shellscript", SCRIPT)]), "accept"),
        Case("mime-boothook", mp([part("text/cloud-boothook", BOOTHOOK)]), "accept"),
        Case(
            "mime-three-kinds",
            mp(
                [
                    part("text/cloud-boothook", BOOTHOOK),
                    part("text/cloud-config", CC),
                    part("text/x-shellscript", SCRIPT, filename="oracle-1.sh"),
                ]
            ),
            "accept",
        ),
        Case("mime-single-not-multipart", single("text/x-shellscript", SCRIPT), "accept"),
        Case("mime-single-text-plain", single("text/plain", CC)),
        Case("mime-uppercase-ctype", mp([part("Text/Cloud-Config", CC)])),
        Case("mime-ctype-params", mp([part('text/x-shellscript; charset="us-ascii"', SCRIPT)])),
        Case("mime-shellscript-holding-cloud-config", mp([part("text/x-shellscript", CC)])),
        Case("mime-shellscript-holding-boothook", mp([part("text/x-shellscript", BOOTHOOK)])),
        Case("mime-shellscript-no-shebang", mp([part("text/x-shellscript", PLAIN)])),
        Case(
            "mime-shellscript-b64-cloud-config-non-utf8",
            mp([part("text/x-shellscript", b"#cloud-config\nx: oracle-\xe9\n", cte="base64")]),
        ),
        Case(
            "mime-shellscript-b64-boothook-non-utf8",
            mp([part("text/x-shellscript", b"#cloud-boothook\necho oracle-\xff\n", cte="base64")]),
        ),
        Case(
            "mime-plain-b64-script-non-utf8",
            mp([part("text/plain", b"#!/bin/sh\necho oracle-\xff\n", cte="base64")]),
        ),
        Case("mime-cloud-config-holding-script", mp([part("text/cloud-config", SCRIPT)])),
        Case("mime-boothook-holding-script", mp([part("text/cloud-boothook", SCRIPT)])),
        Case("mime-not-multipart-type", mp([part("text/x-not-multipart", SCRIPT)])),
        Case("mime-octet-stream-script", mp([part("application/octet-stream", SCRIPT)]), "refuse"),
        Case("mime-custom-type", mp([part("text/x-oracle-custom", SCRIPT)]), "refuse"),
        Case("mime-jinja-part", mp([part("text/jinja2", MARKERS["jinja"])]), "refuse"),
        Case("mime-include-part", mp([part("text/x-include-url", MARKERS["include"])]), "refuse"),
        Case("mime-archive-part", mp([part("text/cloud-config-archive", b"- oracle\n")]), "refuse"),
        Case(
            "mime-part-handler", mp([part("text/part-handler", MARKERS["part-handler"])]), "refuse"
        ),
        Case("mime-upstart", mp([part("text/upstart-job", MARKERS["upstart-job"])]), "refuse"),
        Case("mime-per-boot-type", mp([part("text/x-shellscript-per-boot", SCRIPT)]), "refuse"),
        Case("mime-per-once-type", mp([part("text/x-shellscript-per-once", SCRIPT)]), "refuse"),
        Case("mime-jsonp-part", mp([part("text/cloud-config-jsonp", b"[]\n")]), "refuse"),
        Case("mime-empty-script", mp([part("text/x-shellscript", b"")])),
        Case("mime-empty-cloud-config", mp([part("text/cloud-config", b"")])),
        Case("mime-empty-boothook", mp([part("text/cloud-boothook", b"")])),
        Case("mime-empty-plain", mp([part("text/plain", b"")])),
        Case(
            "mime-empty-plain-and-script",
            mp([part("text/plain", b""), part("text/x-shellscript", SCRIPT)]),
        ),
        Case("mime-no-parts", mp([])),
        Case(
            "mime-only-preamble",
            b'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="x"\n\noracle preamble\n',
        ),
        Case("mime-no-boundary", b"MIME-Version: 1.0\nContent-Type: multipart/mixed\n\n" + CC),
        Case("mime-unclosed", mp([part("text/x-shellscript", SCRIPT)])[:-20]),
        Case(
            "mime-crlf",
            mp(
                [part("text/cloud-config", CC), part("text/x-shellscript", SCRIPT)], newline=b"\r\n"
            ),
        ),
        Case(
            "mime-alternative",
            mp(
                [part("text/cloud-config", CC), part("text/x-shellscript", SCRIPT)],
                subtype="alternative",
            ),
        ),
        Case(
            "mime-preamble-and-epilogue",
            mp([part("text/cloud-config", CC)], preamble=b"oracle preamble\n")
            + b"oracle epilogue\n",
        ),
        Case(
            "mime-duplicate-ctype",
            mp([part("text/x-shellscript", CC, headers=("Content-Type: text/cloud-config",))]),
        ),
        Case(
            "mime-non-utf8-8bit",
            mp([part("text/x-shellscript", b"#!/bin/sh\necho oracle-\xff\n")]),
            "refuse",
        ),
        Case(
            "mime-non-ascii-8bit",
            mp([part("text/x-shellscript", "#!/bin/sh\necho oracle-é-€\n".encode())]),
        ),
        Case(
            "mime-latin-1-8bit",
            mp(
                [part("text/x-shellscript; charset=latin-1", "#!/bin/sh\necho oracle-é\n".encode())]
            ),
        ),
        Case(
            "mime-latin-1-b64",
            mp(
                [
                    part(
                        "text/x-shellscript; charset=latin-1",
                        b"#!/bin/sh\necho oracle-\xe9\n",
                        cte="base64",
                    )
                ]
            ),
        ),
        Case(
            "mime-latin-1-qp",
            mp(
                [
                    part(
                        "text/cloud-config; charset=iso-8859-1",
                        b"#cloud-config\nruncmd: [[echo, oracle-\xe9]]\n",
                        cte="quoted-printable",
                    )
                ]
            ),
        ),
        Case("mime-unknown-charset", mp([part("text/x-shellscript; charset=x-oracle", SCRIPT)])),
        Case(
            "mime-base64",
            mp(
                [
                    part("text/x-shellscript", SCRIPT, cte="base64"),
                    part("text/cloud-config", CC, cte="base64"),
                ]
            ),
            "accept",
        ),
        Case(
            "mime-quoted-printable",
            mp(
                [
                    part(
                        "text/x-shellscript",
                        SCRIPT + b"x=" + b"=" * 3 + b"\n",
                        cte="quoted-printable",
                    )
                ]
            ),
        ),
        Case(
            "mime-base64-garbage",
            mp(
                [
                    part(
                        "text/x-shellscript",
                        b"!!oracle!!\n",
                        headers=("Content-Transfer-Encoding: base64",),
                    )
                ]
            ),
        ),
        Case(
            "mime-uuencode", mp([part("text/x-shellscript", b"", cte="x-uuencode") + b"oracle\n"])
        ),
        Case("mime-7bit-cte", mp([part("text/x-shellscript", SCRIPT, cte="7bit")])),
        Case("mime-binary-cte", mp([part("text/x-shellscript", SCRIPT, cte="binary")])),
        Case(
            "mime-crlf-script-b64",
            mp([part("text/x-shellscript", b"#!/bin/sh\r\necho oracle\r\n", cte="base64")]),
        ),
        Case(
            "mime-rfc822",
            mp([b"Content-Type: message/rfc822\n\n" + single("text/x-shellscript", SCRIPT)]),
            "refuse",
        ),
        Case(
            "mime-merge-type-header",
            mp([part("text/cloud-config", CC, headers=("Merge-Type: list(append)+dict()+str()",))]),
            "refuse",
        ),
        Case(
            "mime-x-merge-type-header",
            mp(
                [
                    part(
                        "text/cloud-config",
                        CC,
                        headers=("X-Merge-Type: list(append)+dict()+str()",),
                    )
                ]
            ),
            "refuse",
        ),
        Case(
            "mime-merge-type-lowercase",
            mp([part("text/cloud-config", CC, headers=("merge-type: list(append)+dict()+str()",))]),
        ),
        Case(
            "mime-merge-type-on-script",
            mp([part("text/x-shellscript", SCRIPT, headers=("Merge-Type: list(append)",))]),
        ),
        Case(
            "mime-launch-index-0",
            mp([part("text/cloud-config", CC, headers=("Launch-Index: 0",))]),
            "refuse",
        ),
        Case(
            "mime-launch-index-1",
            mp(
                [
                    part("text/x-shellscript", SCRIPT, headers=("Launch-Index: 1",)),
                    part("text/cloud-config", CC),
                ]
            ),
            "refuse",
        ),
        Case(
            "mime-launch-index-junk",
            mp([part("text/x-shellscript", SCRIPT, headers=("Launch-Index: oracle",))]),
        ),
        Case(
            "mime-script-named-cloud-config",
            mp([part("text/x-shellscript", SCRIPT, filename="install.cloud-config.sh")]),
            "accept",
        ),
        Case(
            "mime-boothook-named-script",
            mp([part("text/cloud-boothook", BOOTHOOK, filename="early.script.sh")]),
            "accept",
        ),
        Case(
            "mime-cloud-config-named-sh", mp([part("text/cloud-config", CC, filename="oracle.sh")])
        ),
        Case(
            "mime-two-scripts-same-name",
            mp(
                [
                    part("text/x-shellscript", SCRIPT, filename="oracle.sh"),
                    part("text/x-shellscript", b"#!/bin/sh\necho oracle-2\n", filename="oracle.sh"),
                ]
            ),
        ),
        Case(
            "mime-script-named-runcmd",
            mp([part("text/x-shellscript", SCRIPT, filename="runcmd")]),
            "refuse",
        ),
        Case(
            "mime-script-named-failed",
            mp([part("text/x-shellscript", SCRIPT, filename="sealboot-failed")]),
            "refuse",
        ),
        Case(
            "mime-script-named-part-002",
            mp(
                [
                    part("text/x-shellscript", SCRIPT),
                    part("text/x-shellscript", SCRIPT, filename="part-001"),
                ]
            ),
        ),
        Case(
            "mime-script-name-in-ctype",
            mp([part('text/x-shellscript; name="oracle-ct.sh"', SCRIPT)]),
        ),
        Case(
            "mime-script-name-both",
            mp([part('text/x-shellscript; name="oracle-ct.sh"', SCRIPT, filename="oracle-cd.sh")]),
        ),
        Case(
            "mime-script-inline-disposition",
            mp([part("text/x-shellscript", SCRIPT, disposition="inline")]),
        ),
        Case("mime-script-empty-filename", mp([part("text/x-shellscript", SCRIPT, filename="")])),
        Case(
            "mime-script-only-bad-chars", mp([part("text/x-shellscript", SCRIPT, filename="!!@@ ")])
        ),
        Case("mime-script-slash", mp([part("text/x-shellscript", SCRIPT, filename="/")])),
        Case(
            "mime-script-dotdot",
            mp([part("text/x-shellscript", SCRIPT, filename="../../etc/cron.d/oracle")]),
        ),
        Case("mime-script-dots", mp([part("text/x-shellscript", SCRIPT, filename="..")])),
        Case(
            "mime-script-spaces",
            mp([part("text/x-shellscript", SCRIPT, filename="  oracle name with spaces.sh  ")]),
        ),
        Case(
            "mime-script-unicode",
            mp([part("text/x-shellscript", SCRIPT, filename="oracle-é-ü-🙂.sh")]),
        ),
        Case("mime-script-tilde", mp([part("text/x-shellscript", SCRIPT, filename="~oracle")])),
        Case(
            "mime-script-long-name",
            mp([part("text/x-shellscript", SCRIPT, filename="oracle" + "x" * 300)]),
        ),
        Case(
            "mime-script-rfc2231-newline",
            mp(
                [
                    part(
                        "text/x-shellscript",
                        SCRIPT,
                        disposition="attachment; filename*=utf-8''oracle%0Aevil.sh",
                    )
                ]
            ),
        ),
        Case(
            "mime-script-rfc2231-slash",
            mp(
                [
                    part(
                        "text/x-shellscript",
                        SCRIPT,
                        disposition="attachment; filename*=utf-8''..%2Foracle%2Fx",
                    )
                ]
            ),
        ),
        Case(
            "mime-script-rfc2231-latin1",
            mp(
                [
                    part(
                        "text/x-shellscript",
                        SCRIPT,
                        disposition="attachment; filename*=iso-8859-1''oracle%E9.sh",
                    )
                ]
            ),
        ),
        Case(
            "mime-script-rfc2231-continuation",
            mp(
                [
                    part(
                        "text/x-shellscript",
                        SCRIPT,
                        disposition='attachment; filename*0="oracle-"; filename*1="cont.sh"',
                    )
                ]
            ),
        ),
        Case(
            "mime-script-rfc2047-name",
            mp([part("text/x-shellscript", SCRIPT, filename="=?utf-8?b?b3JhY2xlLmg=?=")]),
        ),
        Case(
            "mime-script-quoted-escapes",
            mp(
                [
                    part(
                        "text/x-shellscript",
                        SCRIPT,
                        disposition='attachment; filename="oracle\\"q\\\\.sh"',
                    )
                ]
            ),
        ),
        Case("mime-nested-2", nested(2, part("text/x-shellscript", SCRIPT)), "accept"),
        Case(
            "mime-nested-mixed",
            mp([part("text/cloud-config", CC), container([part("text/x-shellscript", SCRIPT)])]),
        ),
        Case("mime-nested-20", nested(20, part("text/x-shellscript", SCRIPT)), "refuse"),
        Case(
            "mime-nested-without-version", mp([part("text/x-shellscript", SCRIPT)], version=False)
        ),
        Case(
            "mime-150-parts",
            mp(
                [part("text/x-shellscript", b"#!/bin/sh\necho oracle-%d\n" % i) for i in range(150)]
            ),
            "accept",
        ),
        Case(
            "mime-101-mixed-parts",
            mp(
                [
                    part(("text/cloud-config", "text/x-shellscript")[i % 2], (CC, SCRIPT)[i % 2])
                    for i in range(101)
                ]
            ),
        ),
        Case("mime-1001-parts", mp([part("text/cloud-config", CC) for _ in range(1001)]), "refuse"),
    ]
    for name, body in MARKERS.items():
        cases.append(Case(f"mime-plain-{name}", mp([part("text/plain", body)])))
        cases.append(Case(f"mime-plain-lead-ws-{name}", mp([part("text/plain", b"  \n" + body)])))
    for ctype in ("application/gzip", "application/x-gzip"):
        short = ctype.split("/")[1]
        for name, body in (("cloud-config", CC), ("script", SCRIPT), ("boothook", BOOTHOOK)):
            cases.append(
                Case(f"mime-{short}-{name}", mp([part(ctype, gz(body), cte="base64")]), "accept")
            )
        cases.append(
            Case(
                f"mime-{short}-named",
                mp([part(ctype, gz(SCRIPT), cte="base64", filename="oracle-gz.sh")]),
            )
        )
        cases.append(
            Case(
                f"mime-{short}-launch-index",
                mp([part(ctype, gz(SCRIPT), cte="base64", headers=("Launch-Index: 1",))]),
            )
        )
        cases.append(
            Case(
                f"mime-{short}-merge-type",
                mp([part(ctype, gz(CC), cte="base64", headers=("Merge-Type: list(append)",))]),
            )
        )
        cases.append(Case(f"mime-{short}-no-marker", mp([part(ctype, gz(PLAIN), cte="base64")])))
        cases.append(
            Case(
                f"mime-{short}-non-ascii",
                mp([part(ctype, gz("#!/bin/sh\necho oracle-é-€\n".encode()), cte="base64")]),
            )
        )
        cases.append(
            Case(
                f"mime-{short}-non-utf8",
                mp([part(ctype, gz(b"#!/bin/sh\necho oracle\xff\n"), cte="base64")]),
            )
        )
        cases.append(
            Case(
                f"mime-{short}-corrupt", mp([part(ctype, gz(SCRIPT)[:-3], cte="base64")]), "refuse"
            )
        )
        cases.append(Case(f"mime-{short}-not-gzip", mp([part(ctype, SCRIPT)]), "refuse"))
        cases.append(
            Case(
                f"mime-{short}-gzip-in-gzip",
                mp([part(ctype, gz(gz(SCRIPT)), cte="base64")]),
                "refuse",
            )
        )
        cases.append(
            Case(
                f"mime-{short}-mime-inside",
                mp(
                    [part(ctype, gz(multipart([part("text/x-shellscript", SCRIPT)])), cte="base64")]
                ),
                "refuse",
            )
        )
        cases.append(
            Case(
                f"mime-{short}-jinja",
                mp([part(ctype, gz(MARKERS["jinja"]), cte="base64")]),
                "refuse",
            )
        )
    for name, body in (("cloud-config", CC), ("script", SCRIPT)):
        cases.append(
            Case(
                f"mime-plain-raw-gzip-{name}",
                mp([part("text/plain", gz(body), cte="base64")]),
                "refuse",
            )
        )
        cases.append(
            Case(
                f"mime-shellscript-raw-gzip-{name}",
                mp([part("text/x-shellscript", gz(body), cte="base64")]),
            )
        )
        cases.append(
            Case(
                f"mime-octet-gzip-{name}",
                mp([part("application/octet-stream", gz(body), cte="base64")]),
                "refuse",
            )
        )
    for name, body in MERGES.items():
        cases.append(Case(f"mime-merge-{name}", mp([part("text/cloud-config", body)])))
        cases.append(
            Case(f"mime-b64-merge-{name}", mp([part("text/cloud-config", body, cte="base64")]))
        )
    for name, body in LAUNCH_INDEX.items():
        cases.append(Case(f"mime-launch-index-yaml-{name}", mp([part("text/plain", body)])))
    return cases


# --- the generated cases ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Pool:
    """Building blocks for one generated part."""

    ctypes: tuple[str, ...]
    bodies: tuple[bytes, ...]
    names: tuple[str | None, ...]
    headers: tuple[tuple[str, ...], ...]


# Parts split should accept (markers, case, whitespace, CRLF, encodings, names): the cases that
# test agreement rather than refusal.
_GOOD = _Pool(
    ctypes=(
        "text/cloud-config",
        "text/x-shellscript",
        "text/cloud-boothook",
        "text/plain",
        "text/x-not-multipart",
        "application/gzip",
        "application/x-gzip",
        "Text/X-ShellScript",
        "text/x-shellscript; charset=latin-1",
    ),
    bodies=(
        CC,
        SCRIPT,
        BOOTHOOK,
        b"  \n#cloud-config\nruncmd: [oracle]\n",
        b"#Cloud-Config\nruncmd: [oracle]\n",
        b"\t#CLOUD-BOOTHOOK\necho oracle\n",
        b"#!/bin/sh\r\necho oracle\r\n",
        "#!/bin/sh\necho oracle-é-€\n".encode(),
    ),
    names=(None, None, "oracle.sh", "oracle.cloud-config", "oracle dir/x y.sh", "oracle-é.sh", ""),
    headers=((), (), ("X-Oracle: 1",)),
)
# Everything, hostile blocks included.
_ANY = _Pool(
    ctypes=_GOOD.ctypes
    + (
        "text/jinja2",
        "text/cloud-config-archive",
        "application/octet-stream",
        "text/x-shellscript-per-boot",
        "text/x-oracle-custom",
        "text/cloud-config; charset=latin-1",
    ),
    bodies=_GOOD.bodies
    + (
        PLAIN,
        b"",
        b"#!/bin/sh\necho oracle-\xff\n",
        b"#cloud-config\nruncmd: [[echo, oracle-\xe9]]\n",
        MERGES["flow"],
        MERGES["complex-key"],
        LAUNCH_INDEX["one"],
        MARKERS["include"],
        MARKERS["jinja"],
        MARKERS["part-handler"],
        MARKERS["cloud-config-jsonp"],
    ),
    names=_GOOD.names + ("runcmd",),
    headers=_GOOD.headers + (("Merge-Type: list(append)+dict()+str()",), ("Launch-Index: 0",)),
)
_CTES: list[str | None] = [None, None, "base64", "quoted-printable", "7bit"]


def _random_part(rng: random.Random, pool: _Pool, depth: int) -> bytes:
    if depth < 2 and rng.random() < 0.12:
        return container([_random_part(rng, pool, depth + 1) for _ in range(rng.randint(1, 3))])
    ctype = rng.choice(pool.ctypes)
    body = rng.choice(pool.bodies)
    cte = rng.choice(_CTES)
    if "gzip" in ctype and rng.random() < 0.85:
        body = gz(body)
        cte = "base64"
    elif pool is _ANY and rng.random() < 0.08:
        body = gz(body)  # raw gzip in a type that is not decompressed
        cte = "base64"
    if cte in (None, "7bit") and _not_utf8(body):
        cte = rng.choice([None, "base64"])  # sometimes keep it raw: the MIME is then not UTF-8
    name = rng.choice(pool.names)
    if name is not None and rng.random() < 0.3:
        disposition: str | None = "attachment; filename*=utf-8''" + "".join(
            chr(c) if chr(c).isascii() and chr(c).isalnum() else f"%{c:02X}" for c in name.encode()
        )
    else:
        disposition = None
    return part(
        ctype,
        body,
        filename=name,
        cte=cte,
        headers=rng.choice(pool.headers),
        disposition=disposition,
    )


def _not_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def generated(count: int = 200, seed: int = 20240611) -> list[Case]:
    """*count* random MIME user data from the building blocks above; the same for a seed."""
    rng = random.Random(seed)
    cases = []
    for i in range(count):
        # Half from blocks split should accept, so that most of those test agreement.
        pool = _GOOD if i % 2 == 0 else _ANY
        parts = [_random_part(rng, pool, 0) for _ in range(rng.randint(1, 6))]
        data = multipart(parts, version=rng.random() > 0.05)
        if rng.random() < 0.15:
            data = gz(data)
        cases.append(Case(f"generated-{i:03d}", data))
    return cases


def cases() -> list[Case]:
    """The whole corpus: hand-written first, then :func:`generated`; names are unique."""
    global _boundaries
    _boundaries = iter(range(1, 1 << 30))  # the same boundaries on every call
    out = _plain_cases() + _gzip_cases() + _mime_cases() + generated()
    names = [c.name for c in out]
    if len(set(names)) != len(names):
        raise AssertionError("corpus case names are not unique")
    return out
