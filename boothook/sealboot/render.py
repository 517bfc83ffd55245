"""Render a manifest into EC2 user data (MIME with a cloud-boothook part), and read it back.

Example::

    >>> text = render(manifest)
    >>> inspect(text) == manifest
    True
"""

from __future__ import annotations

import ast
import logging
import shlex
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from importlib import resources

from sealboot.errors import InputError, TooLarge
from sealboot_agent import __version__
from sealboot_agent.userdata import MANIFEST_VAR, Refused, sealed_boothook
from sealboot_agent.wire import Manifest, WireError, gzip_deterministic

log = logging.getLogger(__name__)

EC2_USERDATA_MAX = 16384
# What a one-fragment manifest may cost at most, the AWS CLI fallback's code included (gzipped).
ONE_FRAGMENT_BUDGET = 10 * 1024
# cloud-init: the default; capa: CAPA's legacy /etc/secret-userdata.txt + include + restart.
RENDER_HANDOFFS = ("cloud-init", "capa")
CAPA_USERDATA = "/etc/secret-userdata.txt"
BOOTHOOK_TYPE = "text/cloud-boothook"
# The agent modules the AWS CLI fallback runs, embedded in the boothook.
EMBEDDED = {"@@USERDATA_PY@@": "userdata.py", "@@FALLBACK_PY@@": "fallback.py"}
# Keep every line far below RFC 5322's 998-character limit for 7bit MIME bodies.
_CHUNK = 160


def _template() -> str:
    return resources.files("sealboot").joinpath("templates/boothook.sh").read_text()


def embedded_code(module: str) -> str:
    """An agent module's code as the boothook carries it: the same AST, docstrings removed."""
    tree = ast.parse(resources.files("sealboot_agent").joinpath(module).read_text())
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef))
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
    return ast.unparse(tree)


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
    lines.append(f"{MANIFEST_VAR}=''")
    for start in range(0, len(text), _CHUNK):
        lines.append(f"{MANIFEST_VAR}+={q(text[start : start + _CHUNK])}")
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
    for marker, module in EMBEDDED.items():
        code = embedded_code(module)
        if "\nSEALBOOT_" in code or "@@" in code:
            raise AssertionError(f"{module} would end its heredoc early")
        script = script.replace(marker, code)
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
    """EC2 user data for *manifest* as text: MIME with one ``text/cloud-boothook`` part.

    The text is what :func:`render_userdata` sends, gzipped when only that fits in 16 KB.
    """
    text = _mime(manifest, handoff)
    _fit(manifest, text.encode())
    return text


def _fit(manifest: Manifest, raw: bytes) -> bytes:
    if len(raw) <= EC2_USERDATA_MAX:
        return raw
    packed = gzip_deterministic(raw)
    if len(packed) > EC2_USERDATA_MAX:
        raise _too_large(manifest, len(packed), "even gzipped")
    return packed


def render_userdata(manifest: Manifest, handoff: str = "cloud-init") -> bytes:
    """The user data bytes: the MIME text, or gzip of it when only that fits in 16 KB.

    cloud-init decompresses gzip user data itself. Example::

        >>> render_userdata(manifest)[:2]
        b'\\x1f\\x8b'
    """
    raw = _mime(manifest, handoff).encode()
    packed = _fit(manifest, raw)
    log.debug(
        "rendered manifest %s (%d fragment(s), hand-off %s): %d bytes of %d EC2 allows",
        manifest.manifest_id,
        manifest.count,
        handoff,
        len(packed),
        EC2_USERDATA_MAX,
    )
    if packed is not raw:
        log.info(
            "user data is %d bytes as text; gzipped to %d bytes (cloud-init reads both)",
            len(raw),
            len(packed),
        )
    return packed


def inspect(userdata: str | bytes) -> Manifest:
    """Read back the manifest that rendered *userdata* (text, bytes or gzip) carries."""
    if isinstance(userdata, str):
        userdata = userdata.encode("utf-8", "surrogateescape")
    try:
        text, _ = sealed_boothook(userdata)
    except Refused as exc:
        raise InputError(f"this is not user data rendered by sealboot: {exc}") from None
    try:
        return Manifest.from_json(text)
    except WireError as exc:
        raise InputError(f"the manifest in this user data is invalid: {exc}") from exc
