"""Render a manifest into EC2 user data (MIME with a cloud-boothook part), and read it back.

Example::

    >>> text = render(manifest)
    >>> inspect(text) == manifest
    True
"""

from __future__ import annotations

import ast
import functools
import io
import logging
import shlex
import tokenize
from collections.abc import Iterator
from email.message import Message
from email.mime.multipart import MIMEMultipart
from importlib import resources

from sealboot.errors import InputError, TooLarge
from sealboot_agent import __version__
from sealboot_agent.userdata import MANIFEST_VAR, Refused, sealed_boothook
from sealboot_agent.wire import Manifest, WireError, gzip_deterministic

log = logging.getLogger(__name__)

EC2_USERDATA_MAX = 16384
# What a one-fragment manifest may cost at most, the AWS CLI fallback's code included (gzipped);
# the rest of EC2's 16 KB is left for fragment names.
ONE_FRAGMENT_BUDGET = 8 * 1024
# cloud-init: the default; capa: CAPA's legacy /etc/secret-userdata.txt + include + restart.
RENDER_HANDOFFS = ("cloud-init", "capa")
CAPA_USERDATA = "/etc/secret-userdata.txt"
BOOTHOOK_TYPE = "text/cloud-boothook"
# The agent modules the AWS CLI fallback runs, embedded in the boothook, in the order they are
# trimmed: fallback.py from its entry point, then what of userdata.py the trimmed fallback uses.
EMBEDDED = {"@@FALLBACK_PY@@": "fallback.py", "@@USERDATA_PY@@": "userdata.py"}
ENTRY_POINT = "main"
_LAYOUT = (tokenize.NEWLINE, tokenize.NL, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER)
_FSTRING_START = getattr(tokenize, "FSTRING_START", -1)
_FSTRING_END = getattr(tokenize, "FSTRING_END", -1)
# Keep every line far below RFC 5322's 998-character limit for 7bit MIME bodies.
_CHUNK = 160


def _template() -> str:
    """The boothook template without its comments and indentation, which are for maintainers.

    No line of the template is inside a multi-line string, where indentation would be data.
    """
    lines = resources.files("sealboot").joinpath("templates/boothook.sh").read_text().split("\n")
    return "\n".join(
        line.lstrip(" ")
        for n, line in enumerate(lines)
        if n < 3 or not line.lstrip().startswith("# ") or "shellcheck" in line
    )


def _strip(tree: ast.Module) -> ast.Module:
    """Drop docstrings and the annotations Python never evaluates here (dataclass fields stay)."""
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef))
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body = body[1:] or [ast.Pass()]
        if isinstance(node, ast.FunctionDef):
            node.returns = None
            for arg in ast.walk(node.args):
                if isinstance(arg, ast.arg):
                    arg.annotation = None
        if not isinstance(node, ast.ClassDef):
            # A local's annotation is never evaluated; a class's is (dataclass fields).
            for field in ("body", "orelse", "finalbody"):
                stmts = getattr(node, field, None)
                for i, stmt in enumerate(stmts if isinstance(stmts, list) else []):
                    if isinstance(stmt, ast.AnnAssign) and stmt.value:
                        stmts[i] = ast.copy_location(ast.Assign([stmt.target], stmt.value), stmt)  # type: ignore[index]
    return tree


def _binds(stmt: ast.stmt) -> set[str]:
    """The module-level names *stmt* defines."""
    if isinstance(stmt, (ast.FunctionDef, ast.ClassDef)):
        return {stmt.name}
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        return {(a.asname or a.name).split(".")[0] for a in stmt.names}
    targets = stmt.targets if isinstance(stmt, ast.Assign) else [getattr(stmt, "target", None)]
    return {n.id for t in targets if t is not None for n in ast.walk(t) if isinstance(n, ast.Name)}


def _shake(tree: ast.Module, roots: set[str]) -> ast.Module:
    """Keep the module-level statements that *roots* reach (imports of ``__future__`` always)."""
    kept: set[int] = set()
    wanted = set(roots)
    todo = list(roots)
    while todo:
        name = todo.pop()
        for i, stmt in enumerate(tree.body):
            if i in kept or name not in _binds(stmt):
                continue
            kept.add(i)
            for node in ast.walk(stmt):
                if isinstance(node, ast.Name) and node.id not in wanted:
                    wanted.add(node.id)
                    todo.append(node.id)
    tree.body = [
        stmt
        for i, stmt in enumerate(tree.body)
        if i in kept or (isinstance(stmt, ast.ImportFrom) and stmt.module == "__future__")
    ]
    return tree


def _readable_by_python39(tree: ast.Module, module: str) -> None:
    """Refuse a string inside an f-string's braces: Python 3.12+ unparses it as 3.9 cannot read."""
    for node in ast.walk(tree):
        if isinstance(node, ast.FormattedValue) and any(
            isinstance(sub, ast.JoinedStr)
            or (isinstance(sub, ast.Constant) and isinstance(sub.value, (str, bytes)))
            for sub in ast.walk(node.value)
        ):
            raise AssertionError(
                f"{module}:{node.lineno}: a string inside an f-string's braces; the boothook's "
                "python3 may be 3.9, which cannot read what Python 3.12+ writes for it"
            )


def embedded_trees() -> dict[str, ast.Module]:
    """Each embedded agent module as the boothook carries it: what the fallback's entry reaches."""
    trees: dict[str, ast.Module] = {}
    roots = {ENTRY_POINT}
    for module in EMBEDDED.values():
        source = resources.files("sealboot_agent").joinpath(module).read_text()
        trees[module] = _shake(_strip(ast.parse(source)), roots)
        _readable_by_python39(trees[module], module)
        # The next module (userdata.py) must define what this one uses of it.
        roots = {
            node.attr
            for node in ast.walk(trees[module])
            if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "userdata"
        }
    return trees


def _tokens(code: str) -> Iterator[tuple[int, int, int, int]]:
    """(kind, line, start column, end column) of each token; an f-string is one STRING."""
    depth, start = 0, (0, 0)
    for tok in tokenize.generate_tokens(io.StringIO(code).readline):
        # An f-string is one token before Python 3.12 and several after: take it whole.
        if tok.type == _FSTRING_START:
            depth += 1
            start = tok.start if depth == 1 else start
        elif tok.type == _FSTRING_END:
            depth -= 1
            if not depth:
                yield tokenize.STRING, start[0], start[1], tok.end[1]
        elif not depth and tok.type not in _LAYOUT:
            yield tok.type, tok.start[0], tok.start[1], tok.end[1]


def _tighten(code: str) -> str:
    """*code* with one space an indentation level and no space next to an operator."""
    lines = code.split("\n")
    out: dict[int, list[str]] = {}
    prev_kind, prev_line = tokenize.OP, 0
    for kind, line, start, end in _tokens(code):
        text = lines[line - 1][start:end]
        words = out.setdefault(line, [])
        if line == prev_line and (
            tokenize.OP not in (kind, prev_kind)
            or (prev_kind == tokenize.NUMBER and text.startswith("."))  # "1 .real"
        ):
            words.append(" ")
        words.append(text)
        prev_kind, prev_line = kind, line
    return "\n".join(
        " " * ((len(line) - len(line.lstrip(" "))) // 4) + "".join(out[n])
        for n, line in enumerate(lines, start=1)
        if n in out
    )


def _compact(tree: ast.Module) -> str:
    """*tree* as short code, checked to parse back to the same AST (else as unparse wrote it)."""
    code = ast.unparse(tree)
    try:
        tight = _tighten(code)
        if ast.dump(ast.parse(tight)) == ast.dump(ast.parse(code)):
            return tight
    except (SyntaxError, ValueError, tokenize.TokenError):
        pass
    log.debug("could not tighten the embedded code; it goes as ast.unparse wrote it")
    return code


@functools.lru_cache(maxsize=1)
def _embedded() -> dict[str, str]:
    # Computed once a process: it costs ~70 ms, and a bulk seal renders one boothook a machine.
    return {module: _compact(tree) for module, tree in embedded_trees().items()}


def embedded_code(module: str) -> str:
    """An agent module's code as the boothook carries it (see :func:`embedded_trees`)."""
    return _embedded()[module]


def q(value: str) -> str:
    """Shell-quote *value* for bash; the result is always data, never code."""
    if "\x00" in value:
        raise InputError("a value for the boothook contains a NUL byte")
    return shlex.quote(value)


def _assignments(manifest: Manifest, handoff: str) -> str:
    text = manifest.to_json()
    lines = [f"SEALBOOT_ID={q(manifest.manifest_id)}", f"SEALBOOT_HANDOFF={q(handoff)}"]
    if "$" in text or "`" in text:
        # Single quotes keep '$' and backticks in an endpoint URL as data; shellcheck's SC2016
        # ("expressions don't expand in single quotes") is exactly the point here.
        lines.append("# shellcheck disable=SC2016")
    lines.append("{")
    for start in range(0, len(text), _CHUNK):
        op = "+=" if start else "="
        lines.append(f"{MANIFEST_VAR}{op}{q(text[start : start + _CHUNK])}")
    lines.append("}")
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


def _part(subtype: str, body: str) -> Message:
    """A text part with only its content type: RFC 2045's defaults (us-ascii, 7bit) are ours."""
    if not body.isascii():
        raise AssertionError("a part of the rendered user data is not ASCII")
    part = Message()
    part["Content-Type"] = f"text/{subtype}"
    part.set_payload(body)
    return part


def _mime(manifest: Manifest, handoff: str) -> str:
    outer = MIMEMultipart(boundary=f"==sealboot-{manifest.manifest_id[:16]}==")
    part = _part("cloud-boothook", render_boothook(manifest, handoff))
    part.add_header("Content-Disposition", "attachment", filename="sealboot.sh")
    outer.attach(part)
    if handoff == "capa":
        # CAPA's legacy layout; stock cloud-init 20.3+ refuses the missing file (README).
        outer.attach(_part("x-include-url", f"#include\nfile://{CAPA_USERDATA}\n"))
    return outer.as_string()


def _rendered(manifest: Manifest, handoff: str) -> tuple[str, bytes]:
    """The MIME text and the bytes EC2 gets: the text, or its gzip when only that fits.

    Both :func:`render` and :func:`render_userdata` go through here, so they refuse alike.
    """
    text = _mime(manifest, handoff)
    raw = text.encode()
    if len(raw) <= EC2_USERDATA_MAX:
        return text, raw
    packed = gzip_deterministic(raw)
    if len(packed) > EC2_USERDATA_MAX:
        raise TooLarge(
            f"rendered user data is {len(packed)} bytes even gzipped; EC2 accepts at most "
            f"{EC2_USERDATA_MAX}. The manifest names {manifest.count} fragment(s) of "
            f"{max(len(n) for n in manifest.fragments)}-character names"
        )
    log.info(
        "user data is %d bytes as text; gzipped to %d bytes (cloud-init reads both)",
        len(raw),
        len(packed),
    )
    return text, packed


def render(manifest: Manifest, handoff: str = "cloud-init") -> str:
    """EC2 user data for *manifest* as text: MIME with one ``text/cloud-boothook`` part.

    The text is what :func:`render_userdata` sends, gzipped when only that fits in 16 KB.
    """
    return _rendered(manifest, handoff)[0]


def render_userdata(manifest: Manifest, handoff: str = "cloud-init") -> bytes:
    """The user data bytes: the MIME text, or gzip of it when only that fits in 16 KB.

    cloud-init decompresses gzip user data itself. Example::

        >>> render_userdata(manifest)[:2]
        b'\\x1f\\x8b'
    """
    data = _rendered(manifest, handoff)[1]
    log.debug(
        "rendered manifest %s (%d fragment(s), hand-off %s): %d bytes of %d EC2 allows",
        manifest.manifest_id,
        manifest.count,
        handoff,
        len(data),
        EC2_USERDATA_MAX,
    )
    return data


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
