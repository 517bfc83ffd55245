"""Print (or, with --write, update in README.md) the fault and hostile-input tables of the tests."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.functional import faults  # noqa: E402
from tests.hostile import matrix  # noqa: E402

TABLES = {"fault-matrix": faults.markdown_table, "hostile-matrix": matrix.markdown_table}


def main(argv: list[str]) -> int:
    readme = REPO / "README.md"
    text = readme.read_text()
    for name, table in TABLES.items():
        if "--write" not in argv:
            sys.stdout.write(table())
            continue
        head, rest = text.split(f"<!-- {name} -->\n", 1)
        _, tail = rest.split(f"<!-- /{name} -->", 1)
        text = f"{head}<!-- {name} -->\n{table()}<!-- /{name} -->{tail}"
    if "--write" in argv:
        readme.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
