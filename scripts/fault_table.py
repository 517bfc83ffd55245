"""Print (or, with --write, update in README.md) the fault table generated from the tests."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.functional.faults import markdown_table  # noqa: E402

START, END = "<!-- fault-matrix -->\n", "<!-- /fault-matrix -->"


def main(argv: list[str]) -> int:
    table = markdown_table()
    if "--write" not in argv:
        sys.stdout.write(table)
        return 0
    readme = REPO / "README.md"
    text = readme.read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(head + START + table + END + tail)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
