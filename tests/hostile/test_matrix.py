"""Every row of the README's hostile-input table, run through the parser and the agent's mapping."""

from __future__ import annotations

import pytest

from sealboot_agent.errors import AgentError
from sealboot_agent.handoff import plan_cloud_init
from tests.hostile.matrix import ROWS, Row


@pytest.mark.parametrize("row", ROWS, ids=[r.what for r in ROWS])
def test_hostile_user_data_gets_the_documented_outcome(row: Row) -> None:
    message, code = "", 0
    try:
        assert plan_cloud_init(row.data(), 16 << 20).parts
    except AgentError as exc:
        message, code = exc.message, exc.exit_code
    assert code == row.exit_code, message
    assert "\n" not in message
    assert "secret" not in message


def test_readme_hostile_table_is_generated_from_the_matrix() -> None:
    from pathlib import Path

    from tests.hostile.matrix import markdown_table

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    start = text.index("<!-- hostile-matrix -->\n") + len("<!-- hostile-matrix -->\n")
    assert text[start : text.index("<!-- /hostile-matrix -->")] == markdown_table(), (
        "run: python scripts/fault_table.py --write"
    )
