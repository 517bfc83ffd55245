"""What cloud-init makes of user data, part by part, and the boothook hand-off's verdict on it.

One implementation, used everywhere sealboot reads user data: the agent's cloud-init hand-off,
the AWS CLI fallback (``render`` embeds this module's code in the boothook), the datasource and
``sealboot inspect``. It follows cloud-init's own ``convert_string`` and
``UserDataProcessor._process_msg`` (20.4 to 26.x): MIME only when ``mime-version:`` is in the first
4,096 bytes, one gzip layer at the top, gzip inside a part only for gzip content types, a part's
kind from its content type or (for text/plain and x-shellscript) its first line, lowercased.
Every decompression draws on one :class:`Budget`; nothing here ever puts user-data bytes (names,
content types, payload) into a message.

Stdlib only and free of sealboot imports, so that the fallback can run it on any image's python3.

Example::

    >>> [(p.kind, p.size) for p in split(b"#cloud-config\\nruncmd: [id]\\n", Budget(1 << 20))]
    [('cloud-config', 27)]
"""

from __future__ import annotations

import re
import shlex
import string
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import email.message

_CHUNK = 64 * 1024
# cloud-init's handlers.INCLUSION_TYPES_MAP, union over 20.4..26.x; matched lowercased.
_STARTS = sorted(
    {
        "#include": "text/x-include-url",
        "#include-once": "text/x-include-once-url",
        "#!": "text/x-shellscript",
        "#cloud-config": "text/cloud-config",
        "#upstart-job": "text/upstart-job",
        "#part-handler": "text/part-handler",
        "#cloud-boothook": "text/cloud-boothook",
        "#cloud-config-archive": "text/cloud-config-archive",
        "#cloud-config-jsonp": "text/cloud-config-jsonp",
        "## template: jinja": "text/jinja2",
        "text/x-shellscript-per-boot": "text/x-shellscript-per-boot",
        "text/x-shellscript-per-instance": "text/x-shellscript-per-instance",
        "text/x-shellscript-per-once": "text/x-shellscript-per-once",
    }.items(),
    key=lambda item: -len(item[0]),
)
_GZIP_TYPES = frozenset(
    "application/" + t
    for t in [
        "gzip",
        "gzip-compressed",
        "gzipped",
        "x-compress",
        "x-compressed",
        "x-gunzip",
        "x-gzip",
        "x-gzip-compressed",
    ]
)
_SNIFFED = frozenset({"text/plain", "text/x-not-multipart", "text/x-shellscript"})
KINDS = {
    "text/cloud-config": "cloud-config",
    "text/x-shellscript": "script",
    "text/cloud-boothook": "boothook",
}
_WHY_NOT = {
    "text/jinja2": "a '## template: jinja' part needs instance data at render time; use the "
    "sealboot datasource, or render the template before sealing",
    "text/x-include-url": "'#include' fetches more user data from URLs; seal the content itself",
    "text/x-include-once-url": "'#include-once' fetches user data from URLs; seal the content",
    "text/part-handler": "part handlers run code inside cloud-init; use a boothook instead",
    "text/cloud-config-archive": "cloud-config-archive is not supported; use MIME multipart",
    "text/cloud-config-jsonp": "cloud-config-jsonp patches the merged config; use cloud-config",
    "text/upstart-job": "upstart jobs are not supported by current cloud-init",
}
# A custom merge, in any spelling YAML allows: the key itself, quoted or not, in block or flow
# style or as a complex key, or assembled from escapes or a folded double-quoted line.
_MERGE = re.compile(r"merge_how|merge_type|\\[xuUN\r\n\x85\u2028\u2029]")
_LAUNCH_INDEX = re.compile(r"launch-index")
_RUNCMD = re.compile(r"^runcmd\s*:", re.M)
# cloud-init's util.clean_filename: '/' becomes '_', everything else outside this set goes.
_FN_ALLOWED = frozenset("_-.()" + string.digits + string.ascii_letters)
MAX_DEPTH = 16
MAX_PARTS = 1000
# Names no script part may take once cleaned: sealboot's own scripts, and what no file can be.
RESERVED_SCRIPTS = frozenset({"", ".", "..", "runcmd", "sealboot-failed"})
# The longest file name Linux filesystems take (NAME_MAX); a cleaned name is ASCII.
NAME_MAX = 255


# C0 and C1 controls, DEL, and the Unicode line/paragraph separators: anything that could start
# a new log line, move the cursor or reach a terminal as an escape sequence.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def shown(value: object, limit: int = 200) -> str:
    """*value* as text that is safe to log or store: controls escaped, at most *limit* characters.

    For what comes from outside (AWS error text, IMDS answers), never for user data, which is not
    logged at all. Example::

        >>> shown("bad\\nline\\x1b[31m")
        'bad\\\\nline\\\\x1b[31m'
    """
    if isinstance(value, bytes):
        value = value.decode("utf-8", "backslashreplace")
    text = str(value)
    cut = len(text) > limit
    text = _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text[:limit])
    return text + "..." if cut else text


class Refused(Exception):
    """User data the hand-off will not apply; ``too_large`` when it broke the size cap."""

    def __init__(self, message: str, *, too_large: bool = False):
        super().__init__(message)
        self.too_large = too_large


class Budget:
    """How many decompressed bytes one user data may still produce, over every layer and part."""

    def __init__(self, limit: int):
        self.limit = limit
        self.left = limit

    def take(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise Refused(
                f"user data is larger than the cap of {self.limit} bytes once decompressed "
                "(all layers and parts together)",
                too_large=True,
            )


def gunzip(data: bytes, budget: Budget) -> bytes:
    """Every gzip member of *data*, decompressed within *budget*; Refused if corrupt or too big.

    As strict as ``gzip.decompress`` (what cloud-init uses) and never more memory than the budget.
    """
    out = bytearray()
    rest = data
    while True:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            pending = rest
            while pending and not inflater.eof:
                chunk = inflater.decompress(pending, min(max(budget.left, 0) + 1, _CHUNK))
                budget.take(len(chunk))
                out += chunk
                pending = inflater.unconsumed_tail
        except zlib.error:
            raise Refused("a gzip stream in the user data is corrupt") from None
        if not inflater.eof:
            raise Refused("a gzip stream in the user data is truncated")
        rest = inflater.unused_data
        # gzip.decompress ignores trailing NULs after a member and nothing else.
        if not rest.strip(b"\x00"):
            return bytes(out)
        if rest[:2] != b"\x1f\x8b":
            raise Refused("a gzip stream in the user data has trailing bytes")


def _is_gzip(data: bytes) -> bool:
    return data[:2] == b"\x1f\x8b"


def top_level(data: bytes, budget: Budget) -> bytes:
    """cloud-init's one gzip layer at the top (its decomp_gzip); refused where it is corrupt."""
    return gunzip(data, budget) if _is_gzip(data) else data


def kind_from_start(text: str) -> str | None:
    """cloud-init's handlers.type_from_starts_with: the first line's marker, lowercased."""
    head = text.lstrip()[:64].lower()
    for marker, ctype in _STARTS:
        if head.startswith(marker):
            return ctype
    return None


def _text(payload: bytes) -> str | None:
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        return None


def clean_filename(name: str) -> str:
    """cloud-init's util.clean_filename, which names a script part in the scripts directory."""
    return "".join(c for c in name.replace("/", "_") if c in _FN_ALLOWED).strip()


@dataclass(frozen=True)
class Part:
    """One part cloud-init would hand to a handler: its kind, payload and script file name."""

    index: int
    kind: str  # cloud-config | script | boothook
    payload: bytes
    filename: str

    @property
    def size(self) -> int:
        return len(self.payload)


@dataclass(frozen=True)
class _Leaf:
    ctype: str
    payload: bytes
    filename: str | None
    merge_header: bool
    launch_index: bool


def _walk(msg: email.message.Message) -> list[email.message.Message]:
    """Message.walk() without recursion: every part in order, nested at most MAX_DEPTH deep."""
    out: list[email.message.Message] = []
    stack: list[tuple[email.message.Message, int]] = [(msg, 0)]
    while stack:
        part, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise Refused(f"MIME parts are nested more than {MAX_DEPTH} deep")
        out.append(part)
        if len(out) > 2 * MAX_PARTS:
            raise Refused(f"user data has more than {MAX_PARTS} parts")
        subs: list[email.message.Message] = part.get_payload() if part.is_multipart() else []  # type: ignore[assignment]
        stack.extend((sub, depth + 1) for sub in reversed(subs))
    return out


def _decoded(part: email.message.Message) -> bytes:
    """The part's payload after its transfer encoding, re-encoded as cloud-init writes text."""
    raw = part.get_payload(decode=True)
    if not isinstance(raw, bytes):
        return b""
    if part.get_content_maintype() == "text":
        charset = part.get_charset()
        codec = getattr(charset, "input_codec", None) or "utf-8"
        try:
            return raw.decode(codec, "surrogateescape").encode("utf-8", "surrogateescape")
        except (LookupError, UnicodeError):
            raise Refused("a text part has a charset cloud-init cannot decode") from None
    return raw


def _leaves(data: bytes) -> list[_Leaf]:
    """cloud-init's convert_string after the top gzip layer: MIME parts, or one not-multipart."""
    if b"mime-version:" not in data[:4096].lower():
        return [_Leaf("text/x-not-multipart", data, None, False, False)]
    text = _text(data)
    if text is None:
        raise Refused("MIME user data is not UTF-8 (cloud-init cannot read it either)")
    # Imported here: the email package costs the boot path ~15 ms when no MIME is involved.
    import email.parser

    try:
        parts = _walk(email.parser.Parser().parsestr(text))
        return [
            _Leaf(
                part.get_content_type(),
                _decoded(part),
                part.get_filename(),
                any(part.get(h) for h in ("Merge-Type", "X-Merge-Type")),
                "Launch-Index" in part,
            )
            for part in parts
            if part.get_content_maintype() != "multipart"
        ]
    except RecursionError:
        raise Refused(f"MIME parts are nested more than {MAX_DEPTH} deep") from None


def _verdict(where: int, ctype: str, payload: bytes, merge_header: bool) -> str:
    if ctype in _WHY_NOT:
        raise Refused(f"part {where} is {ctype}: {_WHY_NOT[ctype]}")
    kind = KINDS.get(ctype)
    if kind is None:
        raise Refused(
            f"part {where} has a content type the boothook hand-off cannot give to cloud-init "
            "(cloud-init would ignore it, or it needs the datasource); supported: cloud-config, "
            "shell scripts, boothooks (plain, gzip or MIME)"
        )
    if kind == "cloud-config":
        text = payload.decode("utf-8", "replace")
        if merge_header or _MERGE.search(text):
            raise Refused(
                f"part {where} asks for a custom merge (merge_how/merge_type, or a YAML escape "
                "that could spell one); the boothook hand-off can only apply cloud-init's "
                "default merge. Use the sealboot datasource"
            )
        if _LAUNCH_INDEX.search(text):
            raise Refused(f"part {where} is filtered by launch-index, which the hand-off ignores")
    return kind


def split(data: bytes, budget: Budget) -> list[Part]:
    """The parts cloud-init would handle, in order, or Refused before anything happens."""
    parts: list[Part] = []
    for attached, leaf in enumerate(_leaves(top_level(data, budget)), start=1):
        ctype: str | None = leaf.ctype
        payload = leaf.payload
        if ctype in _GZIP_TYPES:
            payload = gunzip(payload, budget)
            ctype = None
            if not payload.isascii():
                # cloud-init re-encodes a decompressed part (raw-unicode-escape); refuse rather
                # than place bytes that differ from what cloud-init would run.
                raise Refused(f"part {len(parts) + 1} is gzip of non-ASCII bytes")
        if ctype is None or ctype in _SNIFFED:
            # cloud-init reads a text part's first line even when later bytes are not UTF-8.
            text = payload.decode("utf-8", "surrogateescape")
            ctype = kind_from_start(text) or ctype or "text/plain"
        if ctype == "text/cloud-config" and _text(payload) is None:
            raise Refused(f"part {len(parts) + 1} is cloud-config that is not UTF-8")
        where = len(parts) + 1
        if leaf.launch_index:
            raise Refused(f"part {where} is filtered by Launch-Index, which the hand-off ignores")
        kind = _verdict(where, ctype, payload, leaf.merge_header)
        filename = clean_filename(leaf.filename or f"part-{attached:03d}")
        if kind == "script" and (filename in RESERVED_SCRIPTS or len(filename) > NAME_MAX):
            # Refused now: writing it would fail only after the fragments are deleted.
            raise Refused(f"part {where}'s file name is empty, reserved or too long once cleaned")
        parts.append(Part(len(parts), kind, payload, filename))
        if len(parts) > MAX_PARTS:
            raise Refused(f"user data has more than {MAX_PARTS} parts")
    if not parts:
        raise Refused("user data holds no part cloud-init would use")
    return parts


def describe(parts: list[Part]) -> str:
    """What the parts are, without a byte of them: index, kind and size."""
    return ", ".join(f"{p.index + 1}: {p.kind} ({p.size} bytes)" for p in parts)


# ---- placement: where each part goes so that the current boot still runs it.

CFG_DIR = "/etc/cloud/cloud.cfg.d"
# Sorts after every name cloud-init's clean_filename can give a script part ("~" > "z").
CLEANUP_SCRIPT = "~sealboot-cleanup"
FAILED_SCRIPT = "sealboot-failed"


def cfg_name(index: int, count: int) -> str:
    """``99-sealboot-NN.cfg``, zero-padded to the widest index so that they sort in part order."""
    width = max(2, len(str(count - 1)))
    return f"{CFG_DIR}/99-sealboot-{index:0{width}d}.cfg"


def scripts_dir(instance_id: str) -> str:
    """cloud-init's per-instance scripts directory; refuses an id that is not one path segment."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", instance_id) or ".." in instance_id:
        raise Refused("cloud-init's instance id is not a plain name; nothing was placed")
    return f"/var/lib/cloud/instances/{instance_id}/scripts"


def cleanup_text(paths: list[str]) -> bytes:
    """A last user script that removes every plaintext copy once the final stage ran it."""
    quoted = " ".join(shlex.quote(p) for p in paths)
    return (
        "#!/bin/sh\n"
        "# sealboot: the sealed user data has been used; do not leave it on disk.\n"
        f'rm -f -- {quoted} "$0"\n'
        "echo 'sealboot: removed the plaintext user data after the final stage'\n"
    ).encode()


def failure_text(message: str) -> bytes:
    """A user script that fails, so ``cloud-init status`` reports the fetch's failure."""
    line = shlex.quote("sealboot: " + message)
    return (
        "#!/bin/sh\n"
        f"echo {line} >&2\n"
        "echo 'sealboot: see the sealboot lines in /var/log/cloud-init-output.log' >&2\n"
        "exit 1\n"
    ).encode()


Write = Callable[[str, bytes, int], None]
Run = Callable[[Part, str], None]


def place(
    parts: list[Part],
    instance_id: str,
    write: Write,
    run_boothook: Run,
    *,
    plaintext: str | None,
    keep_plaintext: bool,
) -> list[str]:
    """Write each part where this boot looks (paths inside the root); run boothooks now."""
    scripts = scripts_dir(instance_id)
    placed: list[str] = []
    count = len(parts)
    for part in parts:
        if part.kind == "cloud-config":
            placed.append(cfg_name(part.index, count))
            write(placed[-1], part.payload, 0o600)
        elif part.kind == "script":
            # cloud-init's own file name, so scripts-user runs them in cloud-init's order.
            placed.append(f"{scripts}/{part.filename}")
            write(placed[-1], dos2unix(part.payload), 0o700)
        else:
            run_boothook(part, instance_id)
    if not keep_plaintext:
        if any(
            p.kind == "cloud-config" and _RUNCMD.search(p.payload.decode("utf-8", "replace"))
            for p in parts
        ):
            # cloud-init writes a sealed runcmd to scripts/runcmd; it has run by cleanup time.
            placed.append(f"{scripts}/runcmd")
        write(
            f"{scripts}/{CLEANUP_SCRIPT}",
            cleanup_text(placed + ([plaintext] if plaintext else [])),
            0o700,
        )
    return placed


def dos2unix(data: bytes) -> bytes:
    """cloud-init's util.dos2unix: CRLF to LF, only when the first line ends in CRLF."""
    pos = data.find(b"\n")
    if pos <= 0 or data[pos - 1 : pos] != b"\r":
        return data
    return data.replace(b"\r\n", b"\n")


def boothook_body(payload: bytes) -> bytes:
    """A nested boothook as cloud-init's handler writes it: dos2unix, marker cut, lstrip."""
    body = dos2unix(payload)
    if body.startswith(b"#cloud-boothook"):
        body = body[len(b"#cloud-boothook") :]
    return body.lstrip()


# ---- reading sealboot's own rendered user data back (datasource, inspect).

MANIFEST_VAR = "SEALBOOT_MANIFEST"
HANDOFF_VAR = "SEALBOOT_HANDOFF"
_SEALED_LIMIT = 1 << 20


def sealed_boothook(raw: bytes) -> tuple[str, str]:
    """(manifest JSON, hand-off) of user data rendered by ``sealboot render``; Refused otherwise."""
    if not _is_gzip(raw) and MANIFEST_VAR.encode() not in raw:
        raise Refused(
            "it carries no sealboot manifest (a cloud-boothook part with SEALBOOT_MANIFEST)"
        )
    parts = split(raw, Budget(_SEALED_LIMIT))
    hooks = [p for p in parts if p.kind == "boothook"]
    if len(hooks) != 1:
        raise Refused("it carries no sealboot manifest (not exactly one cloud-boothook part)")
    text = hooks[0].payload.decode("utf-8", "replace")
    chunks: list[str] = []
    handoff = ""
    for line in text.splitlines():
        name, eq, value = line.partition("=")
        if not eq or name.rstrip("+") not in (MANIFEST_VAR, HANDOFF_VAR):
            continue
        try:
            words = shlex.split(value)
        except ValueError:
            raise Refused("the boothook's manifest line is not valid shell quoting") from None
        if name.rstrip("+") == MANIFEST_VAR:
            chunks.append("".join(words))
        else:
            handoff = "".join(words)
    if not chunks:
        raise Refused("it carries no sealboot manifest in its boothook")
    return "".join(chunks), handoff
