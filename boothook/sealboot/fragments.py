"""What sweep knows about one stored fragment: its name, format, owner, age and tags.

Example::

    >>> identify("ssm", "/cluster.x-k8s.io/ns/c/m/" + "t" * 52 + "/0", None, None).cluster
    'c'
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass

from sealboot.names import (
    EXPIRY_TAG,
    INSTANCE_ID_RE,
    INSTANCE_TAG,
    NAMESPACE_TAG,
    clusters_in,
    parse_fragment_name,
    sealed_by_sealboot,
)
from sealboot_agent.wire import FORMAT_CAPA


def utc(value: datetime.datetime) -> datetime.datetime:
    """*value* in UTC; a naive time is taken to be UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=datetime.timezone.utc)
    return value.astimezone(datetime.timezone.utc)


def utc_or_none(value: object) -> datetime.datetime | None:
    """A timestamp from an AWS answer in UTC, or None when it is missing or not a time."""
    return utc(value) if isinstance(value, datetime.datetime) else None


def iso(value: datetime.datetime | None) -> str | None:
    """``2030-01-01T00:00:00Z``, the form of the expiry tag and of the JSON report."""
    return None if value is None else utc(value).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(text: str) -> datetime.datetime | None:
    try:
        parsed = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return utc(parsed)


@dataclass(frozen=True)
class Fragment:
    """One stored fragment that sealboot (or a stock CAPA controller) wrote."""

    backend: str
    name: str
    format: str  # "native" or "capa"
    created: datetime.datetime | None
    tags: Mapping[str, str]
    namespace: str | None = None
    cluster: str | None = None
    machine: str | None = None

    @property
    def expires_at(self) -> datetime.datetime | None:
        raw = self.tags.get(EXPIRY_TAG)
        return _parse_time(raw) if raw else None

    @property
    def instance_id(self) -> str | None:
        raw = self.tags.get(INSTANCE_TAG)
        return raw if raw and INSTANCE_ID_RE.match(raw) else None


def identify(
    backend: str,
    name: str,
    tags: Mapping[str, str] | None,
    created: datetime.datetime | None,
    *,
    root: str | None = None,
) -> Fragment | None:
    """The Fragment for a stored name, or None when it is not one of ours.

    *tags* may be None for an SSM name whose tags are not read yet: then the name shape alone
    decides, and the caller must call again with the tags.

    Example::

        >>> identify("secrets-manager", "unrelated/secret", {}, None) is None
        True
    """
    parsed = parse_fragment_name(backend, name, root)
    if parsed is None:
        return None
    known = tags if tags is not None else {}
    if parsed.format == FORMAT_CAPA:
        # A CAPA name says nothing of its owner; the tags a CAPA controller writes do.
        clusters = clusters_in(known)
        ours = bool(clusters)
        owner = (known.get(NAMESPACE_TAG), clusters[0] if clusters else None, known.get("Name"))
    else:
        ours = sealed_by_sealboot(known)
        owner = (parsed.namespace, parsed.cluster, parsed.machine)
    if tags is not None and not ours:
        return None
    return Fragment(backend, name, parsed.format, created, known, *owner)


def in_scope(f: Fragment, namespace: str | None, cluster: str | None) -> bool:
    """True when *f* belongs to the namespace and cluster asked for (None: any)."""
    if namespace is not None and f.namespace != namespace:
        return False
    if cluster is None:
        return True
    if f.format == FORMAT_CAPA and f.cluster is None:
        return True  # tags not read yet; decided once they are
    return f.cluster == cluster
