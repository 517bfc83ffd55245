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


REPO = README.parent
DOCS = sorted((REPO / "docs").glob("**/*.md"))
# Top-level entries of the repository that prose cites as paths (``scripts/e2e/rootfs.sh``).
_TOP = r"agent|boothook|tests|scripts|packaging|bench|demo|docs|\.ci"
_REPO_PATH = re.compile(rf"(?<![\w./<>*$@:-])((?:{_TOP})/[\w./-]*)")
# Paths inside the two source trees, as the README writes them (``sealboot_agent/userdata.py``).
_PACKAGE_PATH = re.compile(
    r"(?<![\w./-])((sealboot_agent|sealboot_cloudinit|sealboot)/[\w./-]+\.py)"
)
_PACKAGE_DIRS = {"sealboot_agent": "agent", "sealboot_cloudinit": "agent", "sealboot": "boothook"}
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def _anchors(doc: Path) -> set[str]:
    return {_slug(h) for h in re.findall(r"^#+ (.+)$", doc.read_text(), re.M)}


@pytest.mark.parametrize("doc", [README, *DOCS], ids=lambda p: str(p.relative_to(REPO)))
def test_every_path_and_link_the_docs_cite_exists(doc: Path) -> None:
    text = doc.read_text()
    missing = []
    for match in _REPO_PATH.finditer(text):
        path = match.group(1).rstrip(".")
        if not (REPO / path).exists():
            missing.append(path)
    for match in _PACKAGE_PATH.finditer(text):
        if not (REPO / _PACKAGE_DIRS[match.group(2)] / match.group(1)).exists():
            missing.append(match.group(1))
    for target in _LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue  # https://, mailto:
        path, _, anchor = target.partition("#")
        where = (doc.parent / path).resolve() if path else doc
        if REPO.resolve() not in (where, *where.parents):
            missing.append(f"{target} (outside the repository)")
        elif not where.exists():
            missing.append(target)
        elif anchor and where.suffix == ".md" and anchor not in _anchors(where):
            missing.append(f"{target} (no such heading)")
    assert missing == []


@pytest.mark.parametrize("doc", [README, *DOCS], ids=lambda p: str(p.relative_to(REPO)))
def test_the_docs_point_nowhere_outside_the_repository(doc: Path) -> None:
    text = doc.read_text()
    assert not re.search(r"\.\./shared|\bshared/", text)
    # The design document is docs/DESIGN.md; a bare "DESIGN.md" would send readers elsewhere.
    if doc == README:
        assert re.findall(r"(?<![\w/])DESIGN\.md", text) == []
        assert "docs/DESIGN.md" in text


def test_the_design_document_exists() -> None:
    assert (REPO / "docs/DESIGN.md").is_file()
