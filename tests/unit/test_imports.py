"""The layering rule, enforced over every .py file (ast, so comments and strings do not count).

The toolkit (``boothook/sealboot``) imports from the agent only its wire contract:
``sealboot_agent.wire``, ``.userdata``, ``.stores`` and ``sealboot_agent.__version__``. Nothing
under ``agent/`` (the agent and the cloud-init datasource) imports the toolkit.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).parents[2]
TOOLKIT = "sealboot"
AGENT = "sealboot_agent"
CONTRACT = frozenset({"wire", "userdata", "stores"})
CONTRACT_NAMES = CONTRACT | {"__version__"}
DYNAMIC = frozenset({"import_module", "__import__"})


def _is(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def imports(tree: ast.Module) -> list[tuple[int, str, list[str]]]:
    """(line, module, names) of every import, static or ``importlib.import_module("...")``."""
    found: list[tuple[int, str, list[str]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, a.name, []) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module, [a.name for a in node.names]))
        elif (
            isinstance(node, ast.Call)
            and (getattr(node.func, "attr", None) or getattr(node.func, "id", None)) in DYNAMIC
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value, []))
    return found


def toolkit_violations(tree: ast.Module) -> list[str]:
    """What a toolkit module imports from the agent beyond the wire contract."""
    bad = []
    for line, module, names in imports(tree):
        if not _is(module, AGENT):
            continue
        sub = module.split(".")[1] if "." in module else None
        if sub in CONTRACT or (sub is None and names and set(names) <= CONTRACT_NAMES):
            continue
        bad.append(f"{line}: {module} {names or ''}".rstrip())
    return bad


def agent_violations(tree: ast.Module) -> list[str]:
    """Any import of the toolkit."""
    return [f"{line}: {module}" for line, module, _ in imports(tree) if _is(module, TOOLKIT)]


def check(repo: Path) -> list[str]:
    """Every violation of the rule in *repo*, as ``path:line: what``."""
    out = []
    for path in sorted((repo / "boothook").rglob("*.py")):
        out += [f"{path.relative_to(repo)}:{v}" for v in toolkit_violations(_parse(path))]
    for path in sorted((repo / "agent").rglob("*.py")):
        out += [f"{path.relative_to(repo)}:{v}" for v in agent_violations(_parse(path))]
    return out


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def test_the_tree_keeps_the_layering_rule() -> None:
    files = list((REPO / "boothook").rglob("*.py")) + list((REPO / "agent").rglob("*.py"))
    assert len(files) > 20  # the globs found the tree
    assert check(REPO) == []


def test_the_toolkit_does_import_the_wire_contract() -> None:
    # Not vacuous: the allowed imports are there and are seen.
    seen = {
        module
        for path in (REPO / "boothook").rglob("*.py")
        for _, module, _ in imports(_parse(path))
        if _is(module, AGENT)
    }
    assert {"sealboot_agent.wire", "sealboot_agent.userdata"} <= seen


# (side, how many violations, source): every case the rule must judge, both ways.
CASES = [
    ("toolkit", 1, "import sealboot_agent.cli"),
    ("toolkit", 1, "from sealboot_agent.run import run_fetch"),
    ("toolkit", 1, "from sealboot_agent import handoff"),
    ("toolkit", 1, "from sealboot_agent import __version__, config"),
    ("toolkit", 1, "import sealboot_agent"),
    ("toolkit", 1, "import importlib\nimportlib.import_module('sealboot_agent.imds')"),
    ("toolkit", 1, "def f():\n    from sealboot_agent.errors import AgentError"),
    ("toolkit", 0, "from sealboot_agent.wire import Manifest"),
    ("toolkit", 0, "from sealboot_agent.userdata import split"),
    ("toolkit", 0, "from sealboot_agent.stores import STORES"),
    ("toolkit", 0, "from sealboot_agent import __version__, wire"),
    ("toolkit", 0, "import sealboot_agent.userdata"),
    ("agent", 1, "import sealboot"),
    ("agent", 1, "from sealboot.render import inspect"),
    ("agent", 1, "from sealboot import render"),
    ("agent", 1, "try:\n    import sealboot.cli\nexcept ImportError:\n    pass"),
    ("agent", 1, "__import__('sealboot.seal')"),
    # Agent packages whose names start like the toolkit's are not the toolkit.
    ("agent", 0, "import sealboot_agent.wire\nfrom sealboot_cloudinit import x"),
]


@pytest.mark.parametrize(("side", "count", "source"), CASES)
def test_the_rule_judges_each_import(side: str, count: int, source: str, tmp_path: Path) -> None:
    _tree(tmp_path, **{side: source})
    assert len(check(tmp_path)) == count, check(tmp_path)


def _tree(root: Path, *, toolkit: str = "", agent: str = "") -> None:
    for where, source in (
        ("boothook/sealboot/m.py", toolkit),
        ("agent/sealboot_agent/m.py", agent),
    ):
        path = root / where
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source + "\n")
