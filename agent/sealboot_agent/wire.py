"""The wire contract shared by the toolkit and the agent: names, manifest, digest.

Example::

    >>> m = Manifest.capa("aws.cluster.x-k8s.io/0b8f...", 2, region="eu-west-1")
    >>> m.fragments[1]
    'aws.cluster.x-k8s.io/0b8f...-1'
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import re
import secrets
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

MANIFEST_VERSION = 1

BACKEND_SECRETS_MANAGER = "secrets-manager"
BACKEND_SSM = "ssm"
BACKENDS = (BACKEND_SECRETS_MANAGER, BACKEND_SSM)

FORMAT_NATIVE = "native"
FORMAT_CAPA = "capa"
FORMATS = (FORMAT_NATIVE, FORMAT_CAPA)

DEFAULT_ROOT = "aws.cluster.x-k8s.io"
# SSM names are paths; they may not start with "aws" or "ssm", hence CAPA's other root.
DEFAULT_SSM_ROOT = "/cluster.x-k8s.io"
# SSM values are text: base64 of the gzip stream, so 3 raw bytes per 4 characters.
SSM_STANDARD_MAX = 4096
SSM_ADVANCED_MAX = 8192
SSM_BATCH_MAX = 10
# CAPA's controller writes 4000-character slices of the base64 text.
CAPA_SSM_FRAGMENT_SIZE = 4000
SSM_NAME_MAX = 1011
_SSM_NAME_RE = re.compile(r"^/[A-Za-z0-9/_.-]+\Z")

# Secrets Manager's own ceiling for one SecretBinary value; one fragment holds most user data.
SECRETS_MANAGER_MAX_VALUE = 65536
# What a stock CAPA controller writes per fragment.
CAPA_FRAGMENT_SIZE = 7000
# BatchGetSecretValue accepts at most this many ids per call.
BATCH_GET_MAX_IDS = 20

SECRET_NAME_MAX = 512
# A name component (namespace, cluster, machine) longer than this is shortened deterministically.
COMPONENT_MAX = 96
_COMPONENT_HASH_LEN = 10

_NAME_RE = re.compile(r"^[A-Za-z0-9/_+=.@-]+\Z")
_COMPONENT_RE = re.compile(r"^[A-Za-z0-9_+=.@-]+\Z")
# ARNs append "-XXXXXX"; a name ending like that makes partial-ARN lookups ambiguous.
_ARN_SUFFIX_LIKE = re.compile(r"-[A-Za-z0-9]{6}\Z")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}\Z")
# [0-9], never \d: in a str pattern \d also matches Arabic-Indic and other Unicode digits.
REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}\Z")
MAX_FRAGMENTS = 1024
# The largest manifest any reader accepts. A rendered manifest fits in 16 KB of EC2 user data;
# 1 MiB leaves room for hand-made ones (1024 names of 512 characters) and bounds every read.
MANIFEST_MAX_BYTES = 1 << 20
# An endpoint is printable ASCII without spaces; urlsplit() then checks its structure.
_ENDPOINT_CHARS_RE = re.compile(r"^[!-~]+\Z")
# The random part of a native name (random_token() writes lowercase base32).
_FRAGMENT_RANDOM = "[A-Za-z0-9]+"
_FRAGMENT_INDEX = "[0-9]+"
# Labels are only shown in logs and status; keep them to characters that cannot forge a log line.
_LABEL_RE = re.compile(r"^[A-Za-z0-9_+=.@/:-]{1,256}\Z")


class WireError(ValueError):
    """A manifest, name or payload that breaks the wire contract."""


@dataclass(frozen=True)
class Manifest:
    """What an instance needs to find and verify its fragments; holds no secret.

    Example::

        >>> Manifest.from_json(Manifest.capa("aws.cluster.x-k8s.io/u", 1).to_json()).count
        1
    """

    backend: str
    format: str
    fragments: tuple[str, ...]
    region: str | None = None
    endpoint_url: str | None = None
    sha256: str | None = None
    size: int | None = None
    raw_size: int | None = None
    labels: dict[str, str] = field(default_factory=dict)
    use_fips: bool = False
    v: int = MANIFEST_VERSION

    def __post_init__(self) -> None:
        self.validate()

    @property
    def count(self) -> int:
        return len(self.fragments)

    @property
    def manifest_id(self) -> str:
        """Stable id of this manifest, used for the once-per-instance guard."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:32]

    def validate(self) -> None:
        if not isinstance(self.v, int) or isinstance(self.v, bool) or self.v != MANIFEST_VERSION:
            raise WireError(
                f"manifest version {self.v!r} is not supported (this build reads "
                f"v{MANIFEST_VERSION}); upgrade sealboot-agent on the image"
            )
        if self.backend not in BACKENDS:
            raise WireError(
                f"unknown backend {self.backend!r}; expected one of {', '.join(BACKENDS)}"
            )
        if self.format not in FORMATS:
            raise WireError(f"unknown format {self.format!r}; expected one of {', '.join(FORMATS)}")
        if not self.fragments:
            raise WireError("manifest names no fragments")
        if len(self.fragments) > MAX_FRAGMENTS:
            raise WireError(
                f"manifest names {len(self.fragments)} fragments (limit {MAX_FRAGMENTS})"
            )
        for name in self.fragments:
            if self.backend == BACKEND_SSM:
                check_parameter_name(name)
            else:
                check_secret_name(name)
        if len(set(self.fragments)) != len(self.fragments):
            raise WireError("manifest names the same fragment twice")
        if self.sha256 is not None and not _SHA256_RE.match(self.sha256):
            raise WireError("manifest sha256 must be 64 lowercase hex characters")
        if self.format == FORMAT_NATIVE and self.sha256 is None:
            raise WireError("a native-format manifest must carry the sha256 of the payload")
        if self.region is not None and not REGION_RE.match(self.region):
            raise WireError(f"region {self.region!r} is not an AWS region name")
        if self.endpoint_url is not None:
            check_endpoint_url(self.endpoint_url)
        for number in (self.size, self.raw_size):
            if number is not None and (
                not isinstance(number, int) or isinstance(number, bool) or number < 0
            ):
                raise WireError("manifest sizes must be non-negative integers")
        for key, value in self.labels.items():
            if not (isinstance(key, str) and _LABEL_RE.match(key)):
                raise WireError(f"manifest label key {key!r} is not allowed")
            if not (isinstance(value, str) and _LABEL_RE.match(value)):
                raise WireError(f"manifest label {key} has a value that is not allowed")

    def check_scope(self) -> None:
        """Raise WireError unless every fragment sits under the one prefix this manifest implies.

        Native names are ``<root>/<ns>/<cluster>/<machine>/<token>-<i>`` (SSM:
        ``/<root>/<ns>/<cluster>/<machine>/<token>/<i>``) with the namespace, cluster and machine
        of the labels; CAPA names are ``<prefix>-<i>`` (SSM: ``<prefix>/<i>``) with one prefix.
        Whoever fetches or deletes calls this first, so a tampered manifest cannot reach another
        machine's fragments while its labels (what the log and status show) name this one.
        """
        ssm = self.backend == BACKEND_SSM
        if self.format == FORMAT_CAPA:
            sep = "/" if ssm else "-"
            pattern = re.compile(f"^(.+){re.escape(sep)}{_FRAGMENT_INDEX}\\Z")
            shape = f"<prefix>{sep}<i>"
        else:
            missing = [k for k in ("namespace", "cluster", "machine") if k not in self.labels]
            if missing:
                raise WireError(
                    f"a native-format manifest must carry the label(s) {', '.join(missing)}: "
                    "its fragment names are checked against them"
                )
            # Labels hold the components as seal wrote them (already shortened); shortening is
            # idempotent, so name_component() gives the same text for old and new manifests.
            where = "/".join(
                re.escape(name_component(kind, self.labels[kind]))
                for kind in ("namespace", "cluster", "machine")
            )
            if ssm:
                pattern = re.compile(f"^(/.+/{where}/{_FRAGMENT_RANDOM})/{_FRAGMENT_INDEX}\\Z")
                shape = "/<root>/{ns}/{cluster}/{machine}/<token>/<i>"
            else:
                pattern = re.compile(f"^(.+/{where}/{_FRAGMENT_RANDOM})-{_FRAGMENT_INDEX}\\Z")
                shape = "<root>/{ns}/{cluster}/{machine}/<token>-<i>"
            shape = shape.format(
                ns=self.labels["namespace"],
                cluster=self.labels["cluster"],
                machine=self.labels["machine"],
            )
        prefix: str | None = None
        for name in self.fragments:
            match = pattern.match(name)
            if match is None:
                raise WireError(
                    f"fragment {name!r} is not named {shape}, as this manifest's "
                    f"{'format' if self.format == FORMAT_CAPA else 'labels'} require"
                )
            if prefix is None:
                prefix = match.group(1)
            elif match.group(1) != prefix:
                raise WireError(
                    f"fragment {name!r} is not under {prefix!r}, the prefix of the manifest's "
                    "first fragment; one manifest's fragments share one prefix"
                )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "v": self.v,
            "backend": self.backend,
            "format": self.format,
            "fragments": list(self.fragments),
        }
        for key in ("region", "endpoint_url", "sha256", "size", "raw_size"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.labels:
            out["labels"] = dict(sorted(self.labels.items()))
        if self.use_fips:
            out["use_fips"] = True
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        if not isinstance(data, dict):
            raise WireError("manifest must be a JSON object")
        known = {
            "v",
            "backend",
            "format",
            "fragments",
            "region",
            "endpoint_url",
            "sha256",
            "size",
            "raw_size",
            "labels",
            "use_fips",
        }
        unknown = sorted(set(data) - known)
        if unknown:
            raise WireError(f"manifest has unknown field(s): {', '.join(unknown)}")
        fragments = data.get("fragments")
        if not isinstance(fragments, list) or not all(isinstance(f, str) for f in fragments):
            raise WireError("manifest 'fragments' must be a list of names")
        labels = data.get("labels", {})
        if not isinstance(labels, dict):
            raise WireError("manifest 'labels' must be an object")
        try:
            return cls(
                v=data.get("v", -1),
                backend=data.get("backend", ""),
                format=data.get("format", FORMAT_NATIVE),
                fragments=tuple(fragments),
                region=data.get("region"),
                endpoint_url=data.get("endpoint_url"),
                sha256=data.get("sha256"),
                size=data.get("size"),
                raw_size=data.get("raw_size"),
                labels=labels,
                use_fips=data.get("use_fips", False) is True,
            )
        except TypeError as exc:
            raise WireError(f"manifest is malformed: {exc}") from exc

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        if len(text) > MANIFEST_MAX_BYTES:
            raise WireError(
                f"manifest is over {MANIFEST_MAX_BYTES} bytes; a real one is a few hundred"
            )
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise WireError(f"manifest is not valid JSON: {exc}") from exc
        except RecursionError:
            # json recurses once per nesting level; a manifest is two levels deep at most.
            raise WireError("manifest is not valid JSON: nested too deeply") from None
        return cls.from_dict(data)

    @classmethod
    def capa(
        cls,
        prefix: str,
        count: int,
        *,
        region: str | None = None,
        endpoint_url: str | None = None,
        backend: str = BACKEND_SECRETS_MANAGER,
    ) -> Manifest:
        """What a stock CAPA controller wrote: ``<prefix>-<i>`` secrets or ``<prefix>/<i>``
        SSM parameters, for i in 0..count-1."""
        if count < 1:
            raise WireError("a CAPA manifest names at least 1 fragment")
        # Refuse before building the names: validate() would only see them once allocated.
        if count > MAX_FRAGMENTS:
            raise WireError(f"{count} fragments is over the limit of {MAX_FRAGMENTS}")
        sep = "/" if backend == BACKEND_SSM else "-"
        return cls(
            backend=backend,
            format=FORMAT_CAPA,
            fragments=tuple(f"{prefix.rstrip('/')}{sep}{i}" for i in range(count)),
            region=region,
            endpoint_url=endpoint_url,
        )


def check_secret_name(name: str) -> None:
    """Raise WireError unless *name* is a valid Secrets Manager secret name."""
    if not name or len(name) > SECRET_NAME_MAX:
        raise WireError(f"secret name must be 1-{SECRET_NAME_MAX} characters, got {len(name)}")
    if not _NAME_RE.match(name):
        bad = sorted({c for c in name if not _COMPONENT_RE.match(c) and c != "/"})
        raise WireError(
            f"secret name {name!r} has characters Secrets Manager does not allow: {bad!r}"
        )


def check_parameter_name(name: str) -> None:
    """Raise WireError unless *name* is a valid, fully qualified SSM parameter name."""
    if not name or len(name) > SSM_NAME_MAX or not _SSM_NAME_RE.match(name):
        raise WireError(f"parameter name {name!r} is not a valid SSM parameter path")
    first = name.lstrip("/").split("/", 1)[0].lower()
    if first.startswith(("aws", "ssm")):
        raise WireError(f"parameter name {name!r} may not start with 'aws' or 'ssm'")
    if name.count("/") > 15:
        raise WireError(f"parameter name {name!r} is more than 15 levels deep")


def ssm_fragment_names(
    root: str, namespace: str, cluster: str, machine: str, count: int, token: str
) -> list[str]:
    """Names ``<root>/<ns>/<cluster>/<machine>/<token>/<i>`` for *count* SSM fragments."""
    parts = [
        "/" + root.strip("/"),
        name_component("namespace", namespace),
        name_component("cluster", cluster),
        name_component("machine", machine),
    ]
    names = [f"{'/'.join(parts)}/{token}/{i}" for i in range(count)]
    for name in names:
        check_parameter_name(name)
    return names


def check_endpoint_url(url: str) -> None:
    """Raise WireError unless *url* is an http(s) URL with a host (and a valid port, if any)."""
    problem = None
    if not (isinstance(url, str) and _ENDPOINT_CHARS_RE.match(url)):
        problem = "printable ASCII without spaces"
    else:
        try:
            parts = urllib.parse.urlsplit(url)
            # .port raises ValueError for a port that is not a number in 0-65535.
            ok = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
        except ValueError:  # e.g. "http://[::1": an unclosed IPv6 bracket
            ok = False
        if not ok:
            problem = "an http:// or https:// URL with a host"
    if problem is not None:
        raise WireError(f"endpoint URL {url!r} must be {problem}")


def name_component(kind: str, value: str) -> str:
    """Return *value* as a secret-name component, shortened deterministically if over-long.

    Example::

        >>> name_component("machine", "worker-0")
        'worker-0'
    """
    if not value:
        raise WireError(f"{kind} name must not be empty")
    if not _COMPONENT_RE.match(value):
        bad = "".join(sorted({c for c in value if not _COMPONENT_RE.match(c)}))
        raise WireError(
            f"{kind} name {value!r} contains {bad!r}, which secret names cannot hold; "
            "use a Kubernetes-style name (letters, digits, '-', '.', '_')"
        )
    if value in (".", ".."):
        raise WireError(f"{kind} name {value!r} is not allowed")
    if len(value) <= COMPONENT_MAX:
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:_COMPONENT_HASH_LEN]
    return f"{value[: COMPONENT_MAX - _COMPONENT_HASH_LEN - 1]}.{digest}"


def random_token() -> str:
    """256 random bits in lowercase base32, without padding (52 characters)."""
    return base64.b32encode(secrets.token_bytes(32)).decode().rstrip("=").lower()


def native_fragment_names(
    root: str, namespace: str, cluster: str, machine: str, count: int, token: str
) -> list[str]:
    """Names ``<root>/<ns>/<cluster>/<machine>/<token>-<i>`` for *count* fragments."""
    parts = [
        root.strip("/"),
        name_component("namespace", namespace),
        name_component("cluster", cluster),
        name_component("machine", machine),
    ]
    names = [f"{'/'.join(parts)}/{token}-{i}" for i in range(count)]
    for name in names:
        check_secret_name(name)
        if _ARN_SUFFIX_LIKE.search(name):
            raise WireError(f"secret name {name!r} ends like an ARN suffix")
    return names


def gzip_deterministic(data: bytes) -> bytes:
    """Gzip *data* with mtime 0 and no file name, so equal input gives equal bytes."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        gz.write(data)
    return buf.getvalue()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def split(data: bytes, size: int) -> list[bytes]:
    """Split *data* into chunks of at most *size* bytes (at least one chunk)."""
    if size < 1:
        raise WireError("fragment size must be positive")
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]
