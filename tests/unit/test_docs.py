"""The README documents every exit code and flag the code has, and no other exit codes."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from sealboot.cli import build_parser as toolkit_parser
from sealboot.errors import EXIT_CODES as TOOLKIT_CODES
from sealboot_agent.cli import build_parser as agent_parser
from sealboot_agent.errors import EXIT_CODES as AGENT_CODES

README = Path(__file__).resolve().parents[2] / "README.md"


def _table(tool: str) -> dict[int, str]:
    text = README.read_text()
    match = re.search(rf"<!-- exit-codes:{tool} -->\n(.*?)<!-- /exit-codes -->", text, re.S)
    assert match, f"README has no exit-code table for {tool}"
    rows = re.findall(r"^\| (\d+) \| (.+?) \|$", match.group(1), re.M)
    return {int(code): what for code, what in rows}


def _flags(parser: argparse.ArgumentParser) -> Iterator[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _flags(sub)
        for flag in action.option_strings:
            if flag.startswith("--") and flag not in ("--help", "--version"):
                yield flag


@pytest.mark.parametrize(
    ("tool", "codes"), [("sealboot", TOOLKIT_CODES), ("sealboot-agent", AGENT_CODES)]
)
def test_readme_exit_codes_match_the_code(tool: str, codes: dict[int, str]) -> None:
    assert _table(tool) == codes


@pytest.mark.parametrize("parser", [agent_parser(), toolkit_parser()], ids=["agent", "toolkit"])
def test_every_flag_is_documented(parser: argparse.ArgumentParser) -> None:
    text = README.read_text()
    missing = sorted({f for f in _flags(parser) if not re.search(rf"{re.escape(f)}\b", text)})
    assert missing == []
