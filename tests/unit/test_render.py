"""Unit tests of render/inspect: MIME shape, 16 KB limit, shellcheck and bash quoting."""

from __future__ import annotations

import ast
import email
import email.message
import email.policy
import gzip
import hashlib
import importlib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from sealboot.errors import InputError, TooLarge
from sealboot.render import inspect, q, render, render_boothook, render_userdata
from sealboot_agent.wire import (
    DEFAULT_ROOT,
    Manifest,
    gzip_deterministic,
    native_fragment_names,
    random_token,
)

render_mod = importlib.import_module("sealboot.render")
SHELLCHECK = str(Path(sys.executable).with_name("shellcheck"))
SHA = hashlib.sha256(b"stream").hexdigest()
# The endpoint validator allows any non-space after http(s)://, so these all reach the template.
# Quote and separator characters that would break out of bad quoting (">CANARY" creates a file):
QUOTE_ENDPOINTS = [
    "http://x/';>CANARY;'",
    'http://x/";>CANARY;"',
    "http://x/;>CANARY;",
    "http://x/'\"'\"'>CANARY\\",
    "https://x/*?[a]~!!&&>CANARY",
]
# Expansion syntax that would run code if it were ever expanded:
EXPANSION_ENDPOINTS = [
    "http://x/$(touch${IFS}CANARY)",
    "http://x/`touch${IFS}CANARY`",
    "http://x/'$(touch${IFS}CANARY)'",
    "https://x/$((1+1))${HOME}$HOME",
]
HOSTILE_ENDPOINTS = QUOTE_ENDPOINTS + EXPANSION_ENDPOINTS


def manifest(
    count: int = 1,
    *,
    fmt: str = "native",
    endpoint: str | None = "https://secretsmanager.eu-west-1.amazonaws.com",
) -> Manifest:
    names = native_fragment_names(DEFAULT_ROOT, "default", "c1", "m1", count, random_token())
    return Manifest(
        backend="secrets-manager",
        format=fmt,
        fragments=tuple(names),
        region="eu-west-1",
        endpoint_url=endpoint,
        sha256=SHA if fmt == "native" else None,
        size=1234 if fmt == "native" else None,
        raw_size=4321 if fmt == "native" else None,
        labels={"machine": "m1", "cluster": "c1"},
    )


def capa_manifest() -> Manifest:
    return Manifest.capa(
        f"{DEFAULT_ROOT}/0b8f5c8e-1f7a-4f0e-9d0c-3c1f6c2b7a11", 4, region="us-east-1"
    )


def boothook_parts(userdata: str) -> list[email.message.Message]:
    msg = email.message_from_string(userdata, policy=email.policy.compat32)
    return [p for p in msg.walk() if p.get_content_type() == "text/cloud-boothook"]


def boothook_of(userdata: str) -> str:
    (part,) = boothook_parts(userdata)
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode("ascii")


def assignments_of(script: str) -> str:
    """The lines between ``umask 077`` and the first line that uses ``SEALBOOT_ROOT``."""
    lines = script.splitlines()
    start = lines.index("umask 077") + 1
    end = next(i for i, line in enumerate(lines) if "SEALBOOT_ROOT" in line)
    assert start < end
    return "\n".join(lines[start:end])


def shellcheck(script: str) -> subprocess.CompletedProcess[str]:
    first, rest = script.split("\n", 1)
    assert first == "#cloud-boothook"
    return subprocess.run(
        [SHELLCHECK, "--shell=bash", "--severity=style", "-"],
        input=rest,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def bash(
    script: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", script],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=env if env is not None else {"PATH": "/usr/bin:/bin"},
    )


# --- MIME shape ----------------------------------------------------------------------------


def test_render_is_mime_multipart_with_one_boothook_part() -> None:
    m = manifest()
    text = render(m)
    msg = email.message_from_string(text, policy=email.policy.compat32)
    assert msg.is_multipart()
    assert msg.get_content_type() == "multipart/mixed"
    parts = [p for p in msg.walk() if not p.is_multipart()]
    assert len(parts) == 1
    assert len(boothook_parts(text)) == 1
    assert boothook_of(text).startswith("#cloud-boothook\n")


def test_boothook_starts_with_bash_shebang_after_the_marker() -> None:
    lines = render_boothook(manifest()).splitlines()
    assert lines[0] == "#cloud-boothook"
    assert lines[1] == "#!/bin/bash"
    assert "umask 077" in lines


@pytest.mark.parametrize(
    "m",
    [
        manifest(1),
        manifest(20),
        manifest(3, endpoint=None),
        capa_manifest(),
        *[manifest(2, endpoint=e) for e in HOSTILE_ENDPOINTS],
    ],
)
def test_inspect_reads_back_the_manifest(m: Manifest) -> None:
    text = render(m)
    assert inspect(text) == m
    assert inspect(boothook_of(text)) == m


def test_inspect_refuses_user_data_without_boothook() -> None:
    with pytest.raises(InputError, match="cloud-boothook"):
        inspect("#cloud-config\nruncmd: [true]\n")


def test_inspect_refuses_boothook_without_manifest() -> None:
    with pytest.raises(InputError, match="no sealboot manifest"):
        inspect("#cloud-boothook\n#!/bin/bash\necho hi\n")


def test_every_mime_line_is_under_998_characters() -> None:
    # The endpoint validator allows quotes, which shell quoting blows up five-fold.
    nasty = manifest(30, endpoint="http://x/" + "'" * 900)
    for m in (manifest(1), manifest(40), nasty):
        data = render_userdata(m)
        text = (gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data).decode()
        longest = max(len(line) for line in re.split(r"\r?\n", text))
        assert longest < 998


@pytest.mark.parametrize(
    "value", ["plain", "", "a'b", "$(touch CANARY)", "`touch CANARY`", '"', "\\", "a b\tc\nd", "'"]
)
def test_q_output_is_data_to_bash(value: str, tmp_path: Path) -> None:
    result = bash(f"printf %s {q(value)}", tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == value
    assert os.listdir(tmp_path) == []


def test_q_refuses_nul() -> None:
    with pytest.raises(InputError, match="NUL"):
        q("a\x00b")


# --- size limit ----------------------------------------------------------------------------


def test_render_refuses_over_16k_and_states_the_size(monkeypatch: pytest.MonkeyPatch) -> None:
    # Independent random tokens do not compress, so even gzip cannot bring 400 names under 16 KB.
    names = tuple(f"{DEFAULT_ROOT}/default/c1/m1/{random_token()}-{i}" for i in range(400))
    big = Manifest(
        backend="secrets-manager", format="native", fragments=names, region="eu-west-1", sha256=SHA
    )
    with pytest.raises(TooLarge) as info:
        render(big)
    assert info.value.exit_code == 3
    assert "16384" in info.value.message
    # The size it reports is the real size of what it would have sent.
    monkeypatch.setattr(render_mod, "EC2_USERDATA_MAX", 10**9)
    actual = len(gzip_deterministic(render(big).encode()))
    assert actual > 16384
    assert f"{actual} bytes" in info.value.message


def test_render_accepts_just_under_the_limit() -> None:
    # Grow a list of incompressible names until render refuses; what fit must be <= 16384.
    fitted = 0
    for count in range(1, 400, 7):
        names = tuple(f"{DEFAULT_ROOT}/default/c1/m1/{random_token()}-0" for _ in range(count))
        try:
            data = render_userdata(Manifest("secrets-manager", "native", names, sha256=SHA))
        except TooLarge:
            break
        assert len(data) <= 16384
        fitted = count
    else:
        pytest.fail("render never refused")
    assert fitted >= 20


# --- shellcheck ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "m",
    [
        manifest(1),
        manifest(20),
        manifest(2, endpoint=None),
        capa_manifest(),
        *[manifest(1, endpoint=e) for e in QUOTE_ENDPOINTS],
    ],
)
def test_rendered_boothook_passes_shellcheck(m: Manifest) -> None:
    result = shellcheck(boothook_of(render(m)))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("endpoint", EXPANSION_ENDPOINTS)
def test_rendered_boothook_with_dollar_or_backtick_passes_shellcheck(endpoint: str) -> None:
    result = shellcheck(boothook_of(render(manifest(1, endpoint=endpoint))))
    assert result.returncode == 0, result.stdout + result.stderr


def test_shellcheck_really_checks(tmp_path: Path) -> None:
    # Guard against a vacuous pass: the same call flags an unquoted expansion.
    result = shellcheck("#cloud-boothook\n#!/bin/bash\nx=$1\nrm $x\n")
    assert result.returncode != 0
    assert "SC2086" in result.stdout


# --- bash quoting proof --------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", HOSTILE_ENDPOINTS)
def test_bash_reads_the_manifest_back_exactly_and_runs_nothing(
    endpoint: str, tmp_path: Path
) -> None:
    m = manifest(3, endpoint=endpoint)
    script = assignments_of(boothook_of(render(m)))
    result = bash(
        script + '\nprintf "%s\\0%s" "$SEALBOOT_MANIFEST" "$SEALBOOT_ID"',
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    manifest_json, sid = result.stdout.split("\0")
    assert manifest_json == m.to_json()
    assert sid == m.manifest_id
    assert not (tmp_path / "CANARY").exists()
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("endpoint", [e for e in HOSTILE_ENDPOINTS if "CANARY" in e])
def test_canary_fires_under_naive_quoting(endpoint: str, tmp_path: Path) -> None:
    # Proof that each canary detects code execution: some naive rendering of the same value
    # (unquoted, wrapped in '...', or wrapped in "...") creates a CANARY* file.
    fired = False
    for i, naive in enumerate([endpoint, f"'{endpoint}'", f'"{endpoint}"']):
        work = tmp_path / str(i)
        work.mkdir()
        bash(f"x={naive}\n", work)
        fired = fired or any(n.startswith("CANARY") for n in os.listdir(work))
    assert fired


def _run_boothook(tmp_path: Path, m: Manifest) -> tuple[subprocess.CompletedProcess[str], Path]:
    root = tmp_path / "root"
    root.mkdir()
    fakebin = tmp_path / "bin"
    fakebin.mkdir()
    argv_file = tmp_path / "argv"
    agent = fakebin / "sealboot-agent"
    agent.write_text(f"#!/bin/bash\nprintf '%s\\0' \"$@\" > {shlex.quote(str(argv_file))}\n")
    agent.chmod(0o755)
    script = tmp_path / "boothook.sh"
    script.write_text(boothook_of(render(m)))
    result = subprocess.run(
        ["bash", str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={"PATH": f"{fakebin}:/usr/bin:/bin", "SEALBOOT_ROOT": str(root)},
    )
    return result, argv_file


@pytest.mark.parametrize("endpoint", [QUOTE_ENDPOINTS[0], *EXPANSION_ENDPOINTS[:2]])
def test_boothook_hands_the_exact_manifest_to_the_agent(endpoint: str, tmp_path: Path) -> None:
    m = manifest(2, endpoint=endpoint)
    result, argv_file = _run_boothook(tmp_path, m)
    assert result.returncode == 0, result.stderr
    argv = argv_file.read_text().split("\0")[:-1]
    assert argv == [
        "fetch",
        "--handoff",
        "cloud-init",
        "--manifest",
        m.to_json(),
        "--root",
        str(tmp_path / "root"),
    ]
    assert not (tmp_path / "CANARY").exists()


def test_boothook_does_nothing_once_the_done_marker_exists(tmp_path: Path) -> None:
    m = manifest(1)
    done = tmp_path / "root" / "var" / "lib" / "sealboot" / "done"
    done.mkdir(parents=True)
    (done / m.manifest_id).touch()
    # _run_boothook creates root; it already exists here, so build the run by hand.
    fakebin = tmp_path / "bin"
    fakebin.mkdir()
    marker = tmp_path / "agent-ran"
    (fakebin / "sealboot-agent").write_text(f"#!/bin/bash\ntouch {shlex.quote(str(marker))}\n")
    (fakebin / "sealboot-agent").chmod(0o755)
    result = bash(
        boothook_of(render(m)),
        tmp_path,
        env={"PATH": f"{fakebin}:/usr/bin:/bin", "SEALBOOT_ROOT": str(tmp_path / "root")},
    )
    assert result.returncode == 0
    assert not marker.exists()
    log = (tmp_path / "root" / "var" / "log" / "cloud-init-output.log").read_text()
    assert "nothing to do" in log


# --- the AWS CLI fallback carries the agent's own code ----------------------------------------

AGENT = Path(__file__).parents[2] / "agent/sealboot_agent"
EMBEDDED = [("SEALBOOT_USERDATA_PY", "userdata.py"), ("SEALBOOT_FALLBACK_PY", "fallback.py")]


def _heredoc(script: str, delimiter: str) -> str:
    start = script.index(f"<<'{delimiter}'\n") + len(delimiter) + 5
    return script[start : script.index(f"\n{delimiter}\n", start)]


class _Normalise(ast.NodeTransformer):
    """What render may drop: docstrings, and annotations Python does not evaluate here."""

    def _body(self, body: list[ast.stmt]) -> list[ast.stmt]:
        first = body[0].value if body and isinstance(body[0], ast.Expr) else None
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            body = body[1:] or [ast.Pass()]
        return body

    def visit_Module(self, node: ast.Module) -> ast.Module:
        node.body = self._body(node.body)
        return self.generic_visit(node)  # type: ignore[return-value]

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.ClassDef:
        # Class-level annotations stay: they are dataclass fields.
        node.body = [
            self.visit(s) if not isinstance(s, ast.AnnAssign) else s for s in self._body(node.body)
        ]
        return node

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.FunctionDef:
        node.body = self._body(node.body)
        node.returns = None
        for arg in [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]:
            arg.annotation = None
        for star in (node.args.vararg, node.args.kwarg):
            if star is not None:
                star.annotation = None
        return self.generic_visit(node)  # type: ignore[return-value]

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.stmt:
        if node.value is None:
            return node
        return ast.Assign(targets=[node.target], value=node.value, lineno=node.lineno)


def _statements(source: str) -> list[str]:
    return [ast.dump(s) for s in _Normalise().visit(ast.parse(source)).body]


def _defines(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for stmt in tree.body:
        if isinstance(stmt, (ast.FunctionDef, ast.ClassDef)):
            names.add(stmt.name)
        elif isinstance(stmt, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in stmt.names)
        else:
            names.update(
                n.id
                for n in ast.walk(stmt)
                if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
            )
    return names


@pytest.mark.parametrize(("delimiter", "module"), EMBEDDED)
def test_the_fallback_runs_the_same_code_as_the_agent(delimiter: str, module: str) -> None:
    # The embedded statements, in order, are the module's own (same AST), some left out.
    embedded = [
        ast.dump(s) for s in ast.parse(_heredoc(render_boothook(manifest(3)), delimiter)).body
    ]
    source = _statements((AGENT / module).read_text())
    it = iter(source)
    assert all(any(stmt == s for s in it) for stmt in embedded), (
        f"{module} differs from the agent's"
    )
    assert len(embedded) >= 10


def test_embedded_code_leaves_out_nothing_it_uses() -> None:
    script = render_boothook(manifest(3))
    trees = {m: ast.parse(_heredoc(script, d)) for d, m in EMBEDDED}
    for module, tree in trees.items():
        everything = _defines(ast.parse((AGENT / module).read_text()))
        used = {
            n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)
        }
        assert (used & everything) <= _defines(tree), module
    wanted = {
        n.attr
        for n in ast.walk(trees["fallback.py"])
        if isinstance(n, ast.Attribute)
        and isinstance(n.value, ast.Name)
        and n.value.id == "userdata"
    }
    assert wanted <= _defines(trees["userdata.py"])
    assert "main" in _defines(trees["fallback.py"])
    # Left out: what only the agent, the datasource and inspect use.
    assert "sealed_boothook" not in _defines(trees["userdata.py"])


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def test_the_embedded_code_is_tightened() -> None:
    # Same AST (test above), fewer bytes: one space a level, no blank line, no optional space.
    script = render_boothook(manifest(3))
    for delimiter, _ in EMBEDDED:
        code = _heredoc(script, delimiter)
        plain = [line for line in ast.unparse(ast.parse(code)).splitlines() if line.strip()]
        assert [_indent(line) for line in code.splitlines()] == [_indent(p) // 4 for p in plain]
        assert len(code) < 0.9 * len(ast.unparse(ast.parse(code)))


def test_a_string_inside_f_string_braces_is_refused() -> None:
    # Python 3.12+ would unparse f"{m['k']}" with the same quotes inside, which 3.9 cannot read.
    tree = ast.parse("x = f\"{m['k']}\"\n")
    with pytest.raises(AssertionError, match="f-string"):
        render_mod._readable_by_python39(tree, "x.py")
    render_mod._readable_by_python39(ast.parse('x = f"{m[k]!r:>{w}}"\n'), "x.py")
