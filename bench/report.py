"""The one table `make bench` prints, its PASS/MISS verdicts, and the JSON it writes.

Example::

    >>> table = Table()
    >>> table.add("1", "boot 20 KB", "0.30 s", target="< 0.5 s", ok=True)
    >>> print(table.render())
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Row:
    section: str
    what: str
    measured: str
    reference: str = ""
    ratio: str = ""
    target: str = ""
    result: str = ""


@dataclass
class Table:
    rows: list[Row] = field(default_factory=list)
    verdicts: list[dict[str, object]] = field(default_factory=list)

    def add(
        self,
        section: str,
        what: str,
        measured: str,
        *,
        reference: str = "",
        ratio: str = "",
        target: str = "",
        ok: bool | None = None,
    ) -> None:
        """Add a row; with *ok* (and a *target*) it is a verdict: PASS, MISS (or SKIP)."""
        result = "" if ok is None else ("PASS" if ok else "MISS")
        if target and ok is None:
            result = "SKIP"
        self.rows.append(Row(section, what, measured, reference, ratio, target, result))
        if target:
            self.verdicts.append(
                {"target": f"{what}: {target}", "measured": measured, "result": result}
            )

    def render(self) -> str:
        head = Row("#", "measurement", "measured", "compared with", "ratio", "target", "result")
        cells = [list(head.__dict__.values())] + [list(r.__dict__.values()) for r in self.rows]
        widths = [max(len(str(c[i])) for c in cells) for i in range(len(cells[0]))]
        lines = []
        for n, row in enumerate(cells):
            text = "  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip()
            lines.append(text)
            if n == 0:
                lines.append("  ".join("-" * w for w in widths))
        return "\n".join(lines)


def secs(value: float) -> str:
    return f"{value:.2f} s" if value < 100 else f"{value:.0f} s"


def spread(median: float, low: float, high: float) -> str:
    return f"{median:.3f} s ({low:.3f}-{high:.3f})"


def times(ratio: float) -> str:
    return f"{ratio:.1f}x" if ratio >= 10 else f"{ratio:.2f}x"


def counts(per_boot: dict[str, float]) -> str:
    short = {
        "BatchGetSecretValue": "BatchGet",
        "GetSecretValue": "Get",
        "DeleteSecret": "Delete",
        "CreateSecret": "Create",
    }
    total = sum(per_boot.values())
    each = ", ".join(f"{short.get(k, k)} {v:g}" for k, v in per_boot.items())
    return f"{total:g} ({each})" if each else "0"
