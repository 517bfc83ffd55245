"""Whether sweep deletes a fragment, and why.

Example::

    >>> decide(frag, now=now, states={}).reason
    'live'

A fragment is deleted when any of these holds (first match is the reason reported):

1. ``expired``: its ``sealboot.io/expires-at`` tag is in the past;
2. ``instance-terminated``: its ``sealboot.io/instance-id`` tag names an instance that EC2
   reports as ``shutting-down`` or ``terminated``;
3. ``instance-gone``: that instance is unknown to EC2 (``InvalidInstanceID.NotFound``, or absent
   from a filtered DescribeInstances) and the fragment is older than the grace period (EC2 is
   eventually consistent right after RunInstances);
4. ``older-than``: it was created longer ago than ``--older-than``, or, for a CAPA fragment
   without an expiry tag, longer ago than the CAPA default (24 h).

Everything else is kept: unexpired and either tied to a live instance or not tied to one yet.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping
from dataclasses import dataclass

from sealboot.errors import InputError
from sealboot.fragments import Fragment, iso
from sealboot_agent.wire import FORMAT_CAPA

DEFAULT_CAPA_MAX_AGE = 24 * 3600.0
DEFAULT_INSTANCE_GRACE = 15 * 60.0
GONE_STATES = frozenset({"shutting-down", "terminated"})
_DURATION_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``90s``, ``30m``, ``24h``, ``7d``, ``1h30m`` or ``3600``.

    Example::

        >>> parse_duration("1h30m")
        5400.0
    """
    raw = text.strip().lower()
    if re.fullmatch(r"[0-9]+(\.[0-9]+)?", raw):
        seconds = float(raw)
    elif raw and _DURATION_RE.sub("", raw) == "":
        seconds = sum(float(n) * _UNITS[u] for n, u in _DURATION_RE.findall(raw))
    else:
        raise InputError(f"duration {text!r} is not like 90s, 30m, 24h, 7d or 1h30m")
    if seconds <= 0:
        raise InputError(f"duration {text!r} must be positive")
    return seconds


@dataclass(frozen=True)
class Decision:
    """What sweep does with a fragment, and why."""

    fragment: Fragment
    delete: bool
    reason: str  # expired | instance-terminated | instance-gone | older-than | live
    detail: str


def _age(f: Fragment, now: datetime.datetime) -> float | None:
    return None if f.created is None else (now - f.created).total_seconds()


def _human(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def decide(
    f: Fragment,
    *,
    now: datetime.datetime,
    states: Mapping[str, str | None],
    older_than: float | None = None,
    capa_max_age: float = DEFAULT_CAPA_MAX_AGE,
    instance_grace: float = DEFAULT_INSTANCE_GRACE,
) -> Decision:
    """Whether to delete fragment *f*, and why (see the module docstring for the rules).

    Example::

        >>> decide(frag, now=now, states={}).reason
        'live'
    """
    age = _age(f, now)
    expires = f.expires_at
    if expires is not None and expires <= now:
        return Decision(f, True, "expired", f"expired at {iso(expires)}")
    iid = f.instance_id
    if iid is not None and iid in states:
        state = states[iid]
        if state in GONE_STATES:
            return Decision(f, True, "instance-terminated", f"instance {iid} is {state}")
        if state is None:
            if age is not None and age >= instance_grace:
                return Decision(f, True, "instance-gone", f"instance {iid} does not exist")
            return Decision(
                f, False, "live", f"instance {iid} not visible yet (within the grace period)"
            )
    if older_than is not None and age is not None and age >= older_than:
        return Decision(f, True, "older-than", f"created more than {_human(older_than)} ago")
    capa_untimed = f.format == FORMAT_CAPA and expires is None and older_than is None
    if capa_untimed and age is not None and age >= capa_max_age:
        return Decision(
            f,
            True,
            "older-than",
            f"CAPA fragment without an expiry tag, created more than {_human(capa_max_age)} ago",
        )
    if iid is not None and iid in states:
        return Decision(f, False, "live", f"instance {iid} is {states[iid]}")
    if expires is not None:
        return Decision(f, False, "live", "not expired")
    return Decision(f, False, "live", "young")
