"""Render a manifest into EC2 user data (MIME with a cloud-boothook part), and read it back.

Example::

    >>> text = render(manifest)
    >>> inspect(text) == manifest
    True
"""

from __future__ import annotations

import email
import email.policy
import gzip
import logging
import shlex
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from importlib import resources

from sealboot.errors import InputError, TooLarge
from sealboot_agent import __version__
from sealboot_agent.wire import Manifest, WireError, gzip_deterministic

log = logging.getLogger(__name__)

EC2_USERDATA_MAX = 16384
# cloud-init: the default; capa: CAPA's legacy /etc/secret-userdata.txt + include + restart.
RENDER_HANDOFFS = ("cloud-init", "capa")
CAPA_USERDATA = "/etc/secret-userdata.txt"
BOOTHOOK_TYPE = "text/cloud-boothook"
_MANIFEST_VAR = "SEALBOOT_MANIFEST"
# Keep every line far below RFC 5322's 998-character limit for 7bit MIME bodies.
_CHUNK = 160


def _template() -> str:
    return resources.files("sealboot").joinpath("templates/boothook.sh").read_text()


def q(value: str) -> str:
    """Shell-quote *value* for bash; the result is always data, never code."""
    if "\x00" in value:
        raise InputError("a value for the boothook contains a NUL byte")
    return shlex.quote(value)


def _assignments(manifest: Manifest, handoff: str) -> str:
    text = manifest.to_json()
    lines = [
        f"SEALBOOT_VERSION={q(__version__)}",
        f"SEALBOOT_ID={q(manifest.manifest_id)}",
        f"SEALBOOT_HANDOFF={q(handoff)}",
    ]
    # Single quotes keep '$' and backticks in an endpoint URL as data; shellcheck's SC2016
    # ("expressions don't expand in single quotes") is exactly the point here.
    lines.append("# Every value below is single-quoted: data, never code.")
    lines.append("# shellcheck disable=SC2016")
    lines.append("{")
    lines.append(f"{_MANIFEST_VAR}=''")
    for start in range(0, len(text), _CHUNK):
        lines.append(f"{_MANIFEST_VAR}+={q(text[start : start + _CHUNK])}")
    lines.append("}")
    # Names one per line for the messages (and for code that cannot parse JSON).
    return "\n".join(lines)


def render_boothook(manifest: Manifest, handoff: str = "cloud-init") -> str:
    """The bash boothook for *manifest*, starting with ``#cloud-boothook``."""
    script = _template()
    script = script.replace("@@VERSION@@", __version__)
    if handoff not in RENDER_HANDOFFS:
        raise InputError(f"hand-off {handoff!r} is not one of {', '.join(RENDER_HANDOFFS)}")
    script = script.replace("@@ASSIGNMENTS@@", _assignments(manifest, handoff))
    if "@@" in script:
        raise AssertionError("boothook template has an unfilled marker")
    return script


def _mime(manifest: Manifest, handoff: str) -> str:
    outer = MIMEMultipart(boundary=f"==sealboot-{manifest.manifest_id[:16]}==")
    part = MIMEText(render_boothook(manifest, handoff), "cloud-boothook", "us-ascii")
    part.add_header("Content-Disposition", "attachment", filename="sealboot.sh")
    outer.attach(part)
    if handoff == "capa":
        # CAPA's legacy layout; stock cloud-init 20.3+ refuses the missing file (README).
        include = MIMEText(f"#include\nfile://{CAPA_USERDATA}\n", "x-include-url", "us-ascii")
        outer.attach(include)
    return outer.as_string()


def _too_large(manifest: Manifest, size: int, how: str) -> TooLarge:
    return TooLarge(
        f"rendered user data is {size} bytes {how}; EC2 accepts at most {EC2_USERDATA_MAX}. "
        f"The manifest names {manifest.count} fragment(s) of "
        f"{max(len(n) for n in manifest.fragments)}-character names"
    )


def render(manifest: Manifest, handoff: str = "cloud-init") -> str:
    """EC2 user data for *manifest* as text: MIME with one ``text/cloud-boothook`` part."""
    text = _mime(manifest, handoff)
    size = len(text.encode())
    if size > EC2_USERDATA_MAX:
        raise _too_large(manifest, size, "as text")
    return text


def render_userdata(manifest: Manifest, handoff: str = "cloud-init") -> bytes:
    """The user data bytes: the MIME text, or gzip of it when only that fits in 16 KB.

    cloud-init decompresses gzip user data itself, so a manifest naming many fragments still
    fits. Example::

        >>> render_userdata(manifest)[:13]
        b'Content-Type:'
    """
    raw = _mime(manifest, handoff).encode()
    if len(raw) <= EC2_USERDATA_MAX:
        return raw
    packed = gzip_deterministic(raw)
    if len(packed) > EC2_USERDATA_MAX:
        raise _too_large(manifest, len(packed), "even gzipped")
    log.info(
        "user data is %d bytes as text; gzipped to %d bytes (cloud-init reads both)",
        len(raw),
        len(packed),
    )
    return packed


def _boothook_text(userdata: str) -> str:
    if userdata.startswith("#cloud-boothook"):
        return userdata
    msg = email.message_from_string(userdata, policy=email.policy.compat32)
    for part in msg.walk():
        if part.get_content_type() == BOOTHOOK_TYPE:
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                return payload.decode("utf-8", "replace")
    raise InputError("no text/cloud-boothook part found; is this sealboot user data?")


def inspect(userdata: str | bytes) -> Manifest:
    """Read back the manifest that rendered *userdata* (text, bytes or gzip) carries."""
    if isinstance(userdata, bytes):
        if userdata[:2] == b"\x1f\x8b":
            try:
                userdata = gzip.decompress(userdata)
            except (OSError, EOFError) as exc:
                raise InputError(f"user data looks gzipped but is not: {exc}") from exc
        userdata = userdata.decode("utf-8", "replace")
    parts: list[str] = []
    for line in _boothook_text(userdata).splitlines():
        if line.startswith((f"{_MANIFEST_VAR}=", f"{_MANIFEST_VAR}+=")):
            value = "".join(shlex.split(line.split("=", 1)[1]))
            parts.append(value)
    if not parts:
        raise InputError("the boothook carries no sealboot manifest")
    try:
        return Manifest.from_json("".join(parts))
    except WireError as exc:
        raise InputError(f"the manifest in this user data is invalid: {exc}") from exc
