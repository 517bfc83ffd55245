"""What one sweep found and did: per-fragment outcomes, the summary, the JSON, a progress bar.

Example::

    >>> SweepReport(now=now, dry_run=True, backends=("ssm",)).counts()["would-delete"]
    0
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any, TextIO

from sealboot.decide import Decision
from sealboot.fragments import iso

STATUSES = ("deleted", "would-delete", "already-gone", "failed", "kept")


@dataclass
class Outcome:
    """What happened to one fragment: ``status`` is one of STATUSES."""

    decision: Decision
    status: str
    error: str | None = None
    denied: bool = False

    def to_dict(self) -> dict[str, Any]:
        f = self.decision.fragment
        out: dict[str, Any] = {
            "backend": f.backend,
            "name": f.name,
            "format": f.format,
            "namespace": f.namespace,
            "cluster": f.cluster,
            "machine": f.machine,
            "instance_id": f.instance_id,
            "created": iso(f.created),
            "expires_at": iso(f.expires_at),
            "action": self.status,
            "reason": self.decision.reason,
            "detail": self.decision.detail,
        }
        if self.error is not None:
            out["error"] = self.error
        return out


@dataclass
class SweepReport:
    """Everything one sweep found and did; ``to_dict()`` is the ``--json`` output."""

    now: datetime.datetime
    dry_run: bool
    backends: tuple[str, ...]
    outcomes: list[Outcome] = field(default_factory=list)
    ignored: int = 0

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATUSES, 0)
        for o in self.outcomes:
            out[o.status] += 1
        out["ignored"] = self.ignored
        return out

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "now": iso(self.now),
            "dry_run": self.dry_run,
            "backends": list(self.backends),
            "counts": self.counts(),
            "fragments": [o.to_dict() for o in self.outcomes],
        }

    def summary(self) -> str:
        """The human-readable report: one line per fragment acted on, then the counts."""
        lines = []
        width = max((len(o.status) for o in self.outcomes), default=0)
        for o in self.outcomes:
            if o.status == "kept":
                continue
            line = f"{o.status:<{width}}  {o.decision.fragment.name}  ({o.decision.detail})"
            if o.error:
                line += f": {o.error}"
            lines.append(line)
        c = self.counts()
        kept_reasons: dict[str, int] = {}
        for o in self.outcomes:
            if o.status == "kept":
                kept_reasons[o.decision.detail] = kept_reasons.get(o.decision.detail, 0) + 1
        for detail, n in sorted(kept_reasons.items()):
            lines.append(f"kept {n} fragment(s): {detail}")
        verb = f"would delete {c['would-delete']}" if self.dry_run else f"deleted {c['deleted']}"
        tail = f"sweep ({', '.join(self.backends)}): {verb}"
        if c["already-gone"]:
            tail += f", {c['already-gone']} already gone"
        tail += f", kept {c['kept']}, failed {c['failed']}"
        if self.dry_run:
            tail += " (dry run: nothing was deleted)"
        lines.append(tail)
        return "\n".join(lines) + "\n"


class ProgressBar:
    """A one-line progress bar for a terminal: ``sweep [#####.....] 12/40``."""

    def __init__(self, stream: TextIO, label: str = "sweep", width: int = 30):
        self.stream = stream
        self.label = label
        self.width = width
        self.drawn = False

    def __call__(self, done: int, total: int) -> None:
        filled = self.width if total == 0 else self.width * done // total
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\r{self.label} [{bar}] {done}/{total}")
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
