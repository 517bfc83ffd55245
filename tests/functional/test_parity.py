"""The agent and the AWS CLI fallback hand the same user data to cloud-init, case by case.

The corpus is the oracle corpus (``tests/hostile/corpus.py``) that ``tests/e2e/test_oracle.py``
feeds to real cloud-init. For every case the agent's cloud-init hand-off (``prepare`` then
``apply``, in this process) and the fallback's :func:`hand_off` must place the same files (path,
kind, mode, bytes), run the same nested boothooks, or refuse with the same exit code and message.
The fallback's code is taken from a rendered boothook and run as the boothook runs it: the
image's ``python3 -I -S`` (here /usr/bin/python3), in one process for the whole corpus so that
the test stays fast. A few cases also go end to end, through the real AWS CLI against moto.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from sealboot.render import render_boothook
from sealboot_agent.config import PRIVATE_OUTPUT, AgentConfig
from sealboot_agent.errors import AgentError
from sealboot_agent.handoff import HANDOFFS
from sealboot_agent.wire import Manifest
from tests.functional.conftest import Instance, seal
from tests.hostile.corpus import BOOTHOOK, CC, SCRIPT, Case, cases, gz, multipart, part
from tests.stack.local import LocalStack

IMAGE_PYTHON = "/usr/bin/python3"
IID = "i-0123456789abcdef0"
# What cloud-init reads: parts placed for this boot. The rest (sealboot's own state, the
# plaintext copy, the done marker) is checked per path below.
PLACED = ("etc/cloud", "var/lib/cloud")
SAMPLE = Manifest(
    backend="secrets-manager",
    format="native",
    fragments=("aws.cluster.x-k8s.io/default/c1/m1/parity-0",),
    region="eu-west-1",
    sha256="0" * 64,
)
# Runs inside the image's interpreter: the fallback's hand-off on each case, into its own root,
# its standard output (its log lines and the nested boothooks') into a file per case.
DRIVER = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
from sealboot_agent import fallback
work = sys.argv[2]
verdicts = {}
for name in sorted(os.listdir(work + "/cases")):
    out = os.open(f"{work}/out/{name}", os.O_WRONLY | os.O_CREAT, 0o600)
    saved = os.dup(1)
    os.dup2(out, 1)
    try:
        data = open(f"{work}/cases/{name}", "rb").read()
        fallback.hand_off(data, f"{work}/roots/{name}", sys.argv[3], "parity", lambda: None)
        verdicts[name] = None
    except fallback.Failed as exc:
        verdicts[name] = [exc.code, str(exc)]
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(out)
        os.close(saved)
print(json.dumps(verdicts))
"""

Tree = dict[str, tuple[str, int, bytes]]
Verdict = tuple[int, str] | None


def tree(root: Path, *under: str) -> Tree:
    """Every entry below *under* (inside *root*) but directories: kind, mode and content."""
    found: Tree = {}
    for top in under or ("",):
        for path in sorted((root / top).rglob("*")):
            st = path.lstat()
            if stat.S_ISDIR(st.st_mode):
                continue
            kind = "symlink" if stat.S_ISLNK(st.st_mode) else "file"
            body = os.readlink(path).encode() if kind == "symlink" else path.read_bytes()
            found[str(path.relative_to(root))] = (kind, stat.S_IMODE(st.st_mode), body)
    return found


def hooks_ran(output: str) -> list[str]:
    """What nested boothooks printed: every line that is not one of sealboot's own."""
    own = ("sealboot-boothook[", "sealboot-agent[")
    return [line for line in output.splitlines() if not any(o in line for o in own)]


def extract_fallback(tmp_path: Path) -> Path:
    """The fallback's modules exactly as a rendered boothook writes them."""
    script = render_boothook(SAMPLE)
    pkg = tmp_path / "embedded" / "sealboot_agent"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    for delimiter, module in (
        ("SEALBOOT_USERDATA_PY", "userdata"),
        ("SEALBOOT_FALLBACK_PY", "fallback"),
    ):
        start = script.index(f"<<'{delimiter}'\n") + len(delimiter) + 5
        (pkg / f"{module}.py").write_text(script[start : script.index(f"\n{delimiter}\n", start)])
    return pkg.parent


def run_fallback(tmp_path: Path, corpus: list[Case]) -> dict[str, Verdict]:
    work = tmp_path / "fallback"
    for sub in ("cases", "out", "roots"):
        (work / sub).mkdir(parents=True)
    for i, case in enumerate(corpus):
        (work / "cases" / f"{i:04d}").write_bytes(case.data)
    res = subprocess.run(
        [IMAGE_PYTHON, "-I", "-S", "-c", DRIVER, str(extract_fallback(tmp_path)), str(work), IID],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        # The boothook's umask and an environment like cloud-init's.
        env={"PATH": "/usr/bin:/bin"},
        preexec_fn=lambda: os.umask(0o077),  # noqa: PLW1509 - no threads in the child yet
    )
    assert res.returncode == 0, res.stderr
    verdicts: dict[str, list[object] | None] = json.loads(res.stdout)
    return {k: None if v is None else (int(v[0]), str(v[1])) for k, v in verdicts.items()}  # type: ignore[call-overload]


def run_agent(root: Path, data: bytes, capfd: pytest.CaptureFixture[str]) -> tuple[Verdict, str]:
    cfg = AgentConfig(manifest=SAMPLE, root=root, handoff="cloud-init", output=PRIVATE_OUTPUT)
    handoff = HANDOFFS["cloud-init"]
    capfd.readouterr()
    try:
        handoff.apply(cfg, handoff.prepare(cfg, data, IID))
    except AgentError as exc:
        return (exc.exit_code, exc.message), capfd.readouterr().out
    return None, capfd.readouterr().out


def test_agent_and_fallback_agree_on_the_oracle_corpus(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    corpus = cases() + EXTRA
    old = os.umask(0o077)
    try:
        fallback = run_fallback(tmp_path, corpus)
        differ: list[str] = []
        placed = refused = hooked = 0
        for i, case in enumerate(corpus):
            name = f"{i:04d}"
            agent_root = tmp_path / "agent" / name
            agent_root.mkdir(parents=True)
            agent, agent_out = run_agent(agent_root, case.data, capfd)
            fb_root = tmp_path / "fallback" / "roots" / name
            fb_out = (tmp_path / "fallback" / "out" / name).read_text(errors="replace")
            if agent != fallback[name]:
                differ.append(f"{case.name}: agent {agent}, fallback {fallback[name]}")
                continue
            if tree(agent_root, *PLACED) != tree(fb_root, *PLACED):
                differ.append(f"{case.name}: placed files differ")
            if hooks_ran(agent_out) != hooks_ran(fb_out):
                differ.append(f"{case.name}: nested boothooks differ")
            hooked += bool(hooks_ran(fb_out))
            if agent is None:
                placed += 1
                # The fallback's own files: the plaintext for the cleanup script, the marker.
                assert tree(fb_root, "var/lib/sealboot") == {
                    PRIVATE_OUTPUT.lstrip("/"): ("file", 0o600, case.data),
                    "var/lib/sealboot/done/parity": ("file", 0o600, b""),
                }, case.name
            else:
                refused += 1
                assert tree(fb_root) == {} == tree(agent_root), case.name
    finally:
        os.umask(old)
    assert differ == [], "\n".join(differ)
    # Both outcomes are exercised, and in bulk, or the comparison proves little.
    assert placed > 100, placed
    assert refused > 100, refused
    assert hooked > 10, hooked


def test_the_comparison_sees_a_difference(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # The same comparison on two different user data: it must not call them equal.
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    run_agent(one, CC, capfd)
    run_agent(two, CC.replace(b"oracle-cc", b"oracle-cd"), capfd)
    assert tree(one, *PLACED) != tree(two, *PLACED)
    os.chmod(next(p for p in (one / "etc/cloud").rglob("*.cfg")), 0o644)
    run_agent(two, CC, capfd)
    assert tree(one, *PLACED) != tree(two, *PLACED)
    _, out = run_agent(one, BOOTHOOK, capfd)
    assert hooks_ran(out) == ["oracle-boothook"]


# Beyond the oracle corpus: what once split the two paths (a probe in issue 12).
_MAIL = multipart([part("text/cloud-config", CC), part("text/x-shellscript", SCRIPT)])
EXTRA = [
    Case("from-header-mime", b"From: oracle@example.invalid\n" + _MAIL),
    Case("from-header-plain", b"From: oracle@example.invalid\n\n#cloud-config\nruncmd: [id]\n"),
]
END_TO_END = [
    Case("cloud-config", CC),
    Case(
        "gzip-mime",
        gz(
            multipart(
                [
                    part("text/cloud-config", CC),
                    part("text/x-shellscript", SCRIPT, filename="go.sh"),
                    part("text/cloud-boothook", BOOTHOOK),
                ]
            )
        ),
    ),
    Case("include-refused", b"#include\nhttps://example.invalid/oracle\n"),
]


@pytest.mark.parametrize("case", END_TO_END, ids=lambda c: c.name)
def test_end_to_end_through_the_aws_cli(aws: LocalStack, case: Case, tmp_path: Path) -> None:
    # The boothook twice, the same user data sealed twice: once with sealboot-agent on PATH,
    # once with only the system's tools (the real AWS CLI v2 fetches and deletes).
    results = {}
    for side, path in (("agent", None), ("fallback", "/usr/bin:/bin")):
        work = tmp_path / side
        work.mkdir()
        instance = Instance(root=work / "root", stack=aws)
        instance.root.mkdir()
        sealed = seal(instance.stack, work, case.data)
        env = {"SEALBOOT_ROOT": str(instance.root)} | ({"PATH": path} if path else {})
        res = instance.boot(sealed.userdata_path, env=instance.env(**env))
        results[side] = (res.returncode, tree(instance.root, *PLACED), hooks_ran(instance.log))
    assert results["agent"] == results["fallback"]
    code, placed, hooks = results["agent"]
    scripts = f"var/lib/cloud/instances/{aws.identity.instance_id}/scripts"
    if "refused" in case.name:
        # Refused before any delete; cloud-init status shows it (the same script from both).
        assert code == 11
        assert list(placed) == [f"{scripts}/sealboot-failed"]
    else:
        assert code == 0
        assert f"{scripts}/~sealboot-cleanup" in placed
        assert hooks == (["oracle-boothook"] if "mime" in case.name else [])
