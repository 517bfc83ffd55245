"""Fragment names and tags: how seal writes them and how sweep reads them back, in one place.

Example::

    >>> parse_fragment_name("ssm", "/cluster.x-k8s.io/ns/c1/m0/" + "t" * 52 + "/0").cluster
    'c1'
"""

from __future__ import annotations

import datetime
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Callable, NamedTuple, overload

from sealboot.errors import InputError
from sealboot_agent.wire import (
    BACKEND_SECRETS_MANAGER,
    BACKEND_SSM,
    DEFAULT_ROOT,
    DEFAULT_SSM_ROOT,
    FORMAT_CAPA,
    FORMAT_NATIVE,
    MAX_FRAGMENTS,
    WireError,
    name_component,
    native_fragment_names,
    random_token,
    ssm_fragment_names,
)

# CAPA's own tags, so a stock CAPA controller and sealboot recognise each other's fragments.
CLUSTER_TAG = "sigs.k8s.io/cluster-api-provider-aws/cluster/{cluster}"
CLUSTER_TAG_PREFIX = CLUSTER_TAG.format(cluster="")
ROLE_TAG = "sigs.k8s.io/cluster-api-provider-aws/role"
EXPIRY_TAG = "sealboot.io/expires-at"
NAMESPACE_TAG = "sealboot.io/namespace"
FORMAT_TAG = "sealboot.io/format"
# Ties a machine's fragments to its instance: written by tag-instance (after RunInstances).
INSTANCE_TAG = "sealboot.io/instance-id"
TAG_KEY_MAX = 128
RESERVED_TAG_PREFIXES = ("aws:", "sealboot.io/", "sigs.k8s.io/cluster-api-provider-aws/")
INSTANCE_ID_RE = re.compile(r"^i-[0-9a-f]{8}([0-9a-f]{9})?\Z")

_UUID = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
# Loose shapes that only cut a name into its parts; the wire builders then decide whether the
# name is really one they write (see _rebuilds), so these cannot drift from wire.
_INDEX = "(0|[1-9][0-9]*)"
_NATIVE_PARTS = "([^/]+)/([^/]+)/([^/]+)/([A-Za-z0-9]+)"


class _Shape(NamedTuple):
    """How one backend spells fragment names."""

    root: str
    sep: str  # between the shared prefix and the index
    native: Callable[[str, str, str, str, int, str], list[str]]


_SHAPES = {
    BACKEND_SECRETS_MANAGER: _Shape(DEFAULT_ROOT, "-", native_fragment_names),
    BACKEND_SSM: _Shape(DEFAULT_SSM_ROOT, "/", ssm_fragment_names),
}


@overload
def component(kind: str, value: str) -> str: ...
@overload
def component(kind: str, value: None) -> None: ...
def component(kind: str, value: str | None) -> str | None:
    """A namespace, cluster, machine or role name as the wire contract writes it (None stays
    None); a name it refuses is the caller's InputError.

    Example::

        >>> component("cluster", "prod-eu")
        'prod-eu'
    """
    if value is None:
        return None
    try:
        return name_component(kind, value)
    except WireError as exc:
        raise InputError(str(exc)) from exc


def default_root(backend: str) -> str:
    """Where *backend*'s fragments live unless told otherwise.

    Example::

        >>> default_root("ssm")
        '/cluster.x-k8s.io'
    """
    return _SHAPES[backend].root


def capa_fragment_names(
    backend: str, prefix: str, count: int, root: str | None = None
) -> list[str]:
    """Names ``<root>/<prefix>-<i>`` (SSM: ``<root>/<prefix>/<i>``), as a stock CAPA controller
    writes them with a UUID prefix.

    Example::

        >>> capa_fragment_names("secrets-manager", "u", 2)
        ['aws.cluster.x-k8s.io/u-0', 'aws.cluster.x-k8s.io/u-1']
    """
    shape = _SHAPES[backend]
    return [f"{root or shape.root}/{prefix}{shape.sep}{i}" for i in range(count)]


def fragment_names(
    backend: str,
    fmt: str,
    root: str | None,
    namespace: str,
    cluster: str,
    machine: str,
    count: int,
) -> list[str]:
    """Fresh names for *count* fragments of one seal (a new random token or UUID each call).

    Example::

        >>> fragment_names("secrets-manager", "native", None, "ns", "c1", "m0", 1)[0][:30]
        'aws.cluster.x-k8s.io/ns/c1/m0/'
    """
    shape = _SHAPES[backend]
    try:
        if fmt == FORMAT_CAPA:
            # Exactly what a stock CAPA controller writes, so either side can read the other.
            return capa_fragment_names(backend, str(uuid.uuid4()), count)
        return shape.native(root or shape.root, namespace, cluster, machine, count, random_token())
    except WireError as exc:
        raise InputError(str(exc)) from exc


def fragment_tags(
    cluster: str,
    machine: str,
    namespace: str,
    role: str,
    fmt: str,
    expires: datetime.datetime,
    extra: Sequence[tuple[str, str]] = (),
) -> dict[str, str]:
    """The tags seal puts on every fragment; *extra* may not override sealboot's own keys.

    Example::

        >>> fragment_tags("c1", "m0", "ns", "node", "native", now)["Name"]
        'm0'
    """
    tags = {
        CLUSTER_TAG.format(cluster=cluster): "owned",
        ROLE_TAG: role,
        "Name": machine,
        NAMESPACE_TAG: namespace,
        FORMAT_TAG: fmt,
        EXPIRY_TAG: expires.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    for key, value in extra:
        if key.startswith(RESERVED_TAG_PREFIXES) or key == "Name":
            raise InputError(f"tag {key!r} is set by sealboot itself and cannot be overridden")
        tags[key] = value
    return tags


def clusters_in(tags: Mapping[str, str]) -> list[str]:
    """The clusters a fragment's CAPA cluster tags name."""
    return [k[len(CLUSTER_TAG_PREFIX) :] for k in tags if k.startswith(CLUSTER_TAG_PREFIX)]


def sealed_by_sealboot(tags: Mapping[str, str]) -> bool:
    """True when the tags are the ones seal writes (a stock CAPA controller writes neither)."""
    return EXPIRY_TAG in tags or FORMAT_TAG in tags


@dataclass(frozen=True)
class ParsedName:
    """What a fragment name says: its format and, for native names, whose it is."""

    format: str
    namespace: str | None = None
    cluster: str | None = None
    machine: str | None = None


def _rebuilds(name: str, index: str, build: Callable[[int], list[str]]) -> bool:
    """True when *build* (a wire builder) writes exactly *name* as the fragment at *index*."""
    if int(index) >= MAX_FRAGMENTS:
        return False
    try:
        first = build(1)[0]
    except WireError:
        return False
    # Every builder writes "<prefix><i>"; comparing fragment 0 keeps this O(1) per name.
    return first[:-1] + index == name and first.endswith("0")


def parse_fragment_name(backend: str, name: str, root: str | None = None) -> ParsedName | None:
    """The parts of a stored fragment name, or None when seal (or CAPA) never writes it.

    Example::

        >>> parse_fragment_name("secrets-manager", "unrelated/secret") is None
        True
    """
    shape = _SHAPES[backend]
    root = (root or shape.root).rstrip("/")
    if not name.startswith(root + "/"):
        return None
    rest = name[len(root) + 1 :]
    sep = re.escape(shape.sep)
    native = re.fullmatch(f"{_NATIVE_PARTS}{sep}{_INDEX}", rest)
    if native:
        ns, cluster, machine, token, index = native.groups()
        if _rebuilds(name, index, lambda n: shape.native(root, ns, cluster, machine, n, token)):
            return ParsedName(FORMAT_NATIVE, ns, cluster, machine)
        return None
    capa = re.fullmatch(f"({_UUID}){sep}{_INDEX}", rest)
    if capa:
        prefix, index = capa.groups()
        if _rebuilds(name, index, lambda n: capa_fragment_names(backend, prefix, n, root)):
            return ParsedName(FORMAT_CAPA)
    return None
