"""The fault matrix, crash safety at every phase, the lock, the deadline, and doctor."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.functional.conftest import (
    BIN,
    Instance,
    Sealed,
    assert_no_secret,
    cloud_config,
    incompressible,
    seal,
    secret_names,
)
from tests.functional.faults import FAULTS, Ctx, Fault, markdown_table

README = Path(__file__).resolve().parents[2] / "README.md"


def _argv(instance: Instance, sealed: Sealed, ctx: Ctx) -> list[str]:
    """``fetch`` through the fault proxy; a later --endpoint-url in ctx.args wins."""
    return [
        "fetch",
        "--manifest",
        str(sealed.manifest_path),
        "--root",
        str(instance.root),
        "--endpoint-url",
        instance.stack.proxy.url,
        *ctx.args,
    ]


def _run(instance: Instance, sealed: Sealed, ctx: Ctx) -> subprocess.CompletedProcess[str]:
    args = _argv(instance, sealed, ctx)
    # A later --endpoint-url wins (argparse keeps the last), so faults can override the proxy.
    env = instance.env(**ctx.env)
    return subprocess.run(
        [*ctx.wrap, str(BIN / "sealboot-agent"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("fault", FAULTS, ids=[f.id for f in FAULTS])
def test_fault(fault: Fault, instance: Instance, tmp_path: Path) -> None:
    sealed = seal(instance.stack, tmp_path, cloud_config(20_000))
    ctx = Ctx(stack=instance.stack, root=instance.root, fragments=sealed.manifest.fragments)
    fault.inject(ctx)
    try:
        res = _run(instance, sealed, ctx)
    finally:
        instance.stack.moto.enforce_iam(float("inf"))

    assert res.returncode == fault.exit_code, res.stderr
    assert fault.log in res.stderr
    if fault.exit_code != 0:
        assert "what to do:" in res.stderr
    assert instance.output.exists() == fault.output_written
    left = set(secret_names(instance.stack))
    if fault.fragments_deleted:
        assert left == set()
    elif fault.recoverable:
        assert set(sealed.manifest.fragments) <= left, "a fragment went before it was safe"
    assert_no_secret(instance.all_text() + res.stderr.encode(), sealed.payload)

    if fault.exit_code == 0 or not fault.recoverable:
        return
    fault.clear(ctx)
    rerun = _run(instance, sealed, ctx)
    assert rerun.returncode == 0, rerun.stderr
    assert instance.output.read_bytes() == sealed.payload
    assert secret_names(instance.stack) == []


def test_readme_fault_table_is_generated_from_the_matrix() -> None:
    text = README.read_text()
    start = text.index("<!-- fault-matrix -->\n") + len("<!-- fault-matrix -->\n")
    end = text.index("<!-- /fault-matrix -->")
    assert text[start:end] == markdown_table(), "run: python scripts/fault_table.py --write"


def test_deadline_holds(instance: Instance, tmp_path: Path) -> None:
    sealed = seal(instance.stack, tmp_path, cloud_config())
    instance.stack.proxy.faults.throttle.update(BatchGetSecretValue=1.0, GetSecretValue=1.0)
    ctx = Ctx(
        stack=instance.stack,
        root=instance.root,
        fragments=sealed.manifest.fragments,
        env={"SEALBOOT_DEADLINE": "5"},
    )

    started = time.monotonic()
    res = _run(instance, sealed, ctx)
    took = time.monotonic() - started

    assert res.returncode == 7
    assert "5s deadline ran out" in res.stderr
    # Python start-up plus one last request may follow the deadline; nothing more.
    assert 4.0 <= took < 8.0, took
    assert instance.stack.proxy.injected["BatchGetSecretValue:throttle"] >= 3


def test_access_denied_is_retried_inside_the_boot_window(
    instance: Instance, tmp_path: Path
) -> None:
    sealed = seal(instance.stack, tmp_path, cloud_config())
    ctx = Ctx(stack=instance.stack, root=instance.root, fragments=sealed.manifest.fragments)
    from tests.functional.faults import _allow, _deny

    _deny(ctx)
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    # Pretend this boot is young: AccessDenied is retried for ~20 more seconds.
    ctx.args += ["--denied-grace", str(uptime + 20)]
    args = _argv(instance, sealed, ctx)
    proc = subprocess.Popen(
        [str(BIN / "sealboot-agent"), *args],
        env=instance.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(2)
        assert proc.poll() is None, "AccessDenied must be retried during the boot window"
        _allow(ctx)  # IAM has caught up
        _, err = proc.communicate(timeout=60)
    finally:
        instance.stack.moto.enforce_iam(float("inf"))
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "AccessDeniedException, retry" in err
    assert instance.output.read_bytes() == sealed.payload


def _paused_agent(instance: Instance, sealed: Sealed, point: str) -> subprocess.Popen[bytes]:
    """Start the agent with the test hook and return once it has paused at *point*."""
    args = [
        str(BIN / "sealboot-agent"),
        "fetch",
        "--manifest",
        str(sealed.manifest_path),
        "--root",
        str(instance.root),
    ]
    paused = instance.root / "var/lib/sealboot/paused"
    proc = subprocess.Popen(
        args,
        env=instance.env(SEALBOOT_TEST_PAUSE_AT=point),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    end = time.monotonic() + 30
    while not paused.exists() and time.monotonic() < end and proc.poll() is None:
        time.sleep(0.02)
    return proc


PAUSE_POINTS = [
    "started",
    "credentials",
    "fetched",
    "verified",
    "output-on-disk",
    "written",
    "deleted",
    "handed_off",
]


@pytest.mark.parametrize("point", PAUSE_POINTS)
def test_sigkill_at_each_phase_then_rerun(point: str, instance: Instance, tmp_path: Path) -> None:
    payload = incompressible(100_000)  # two fragments, so a delete can be half done
    sealed = seal(instance.stack, tmp_path, payload)
    proc = _paused_agent(instance, sealed, point)
    try:
        assert (instance.root / "var/lib/sealboot/paused").read_text() == point
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    paused = instance.root / "var/lib/sealboot/paused"
    paused.unlink()
    written = point in ("output-on-disk", "written", "deleted", "handed_off")
    if not written:
        assert set(secret_names(instance.stack)) == set(sealed.manifest.fragments)

    rerun = instance.agent("fetch", "--manifest", str(sealed.manifest_path))

    assert rerun.returncode == 0, rerun.stderr
    assert instance.output.read_bytes() == payload
    assert secret_names(instance.stack) == []
    state = instance.state()
    assert (state["phase"], state["outcome"]) == ("done", "ok")
    if point in ("written", "deleted", "handed_off"):
        assert "resuming" in rerun.stderr, "a verified write is not fetched twice"
    assert not list(instance.root.rglob(".*sealboot-tmp")), "no temp file is left behind"


def test_two_runs_never_interleave(instance: Instance, tmp_path: Path) -> None:
    sealed = seal(instance.stack, tmp_path, cloud_config())
    first = _paused_agent(instance, sealed, "fetched")
    try:
        second = instance.agent(
            "fetch",
            "--manifest",
            str(sealed.manifest_path),
            env=instance.env(SEALBOOT_DEADLINE="2"),
        )
    finally:
        first.kill()
        first.wait()
    assert second.returncode == 10
    assert "holds the lock" in second.stderr
    assert set(secret_names(instance.stack)) == set(sealed.manifest.fragments)

    third = instance.agent("fetch", "--manifest", str(sealed.manifest_path))
    assert third.returncode == 0, third.stderr


def test_doctor_checks_everything_without_reading_secrets(
    instance: Instance, tmp_path: Path
) -> None:
    sealed = seal(instance.stack, tmp_path, cloud_config())

    res = instance.agent("doctor", "--manifest", str(sealed.manifest_path))

    assert res.returncode == 0, res.stdout + res.stderr
    for name in ("imds", "identity", "credentials", "region", "endpoint", "fragment"):
        assert f"[ ok ] {name}:" in res.stdout
    assert f"{sealed.manifest.fragments[0]}: exists" in res.stdout
    # A warning (cloud-init is not installed here) is counted as one, not as a pass.
    assert re.fullmatch(
        r"\d+ passed, \d+ warnings?, 0 failed, 0 skipped", res.stdout.splitlines()[-1]
    )
    calls = instance.stack.proxy.calls  # doctor went direct; the proxy saw nothing
    assert calls["GetSecretValue"] == calls["BatchGetSecretValue"] == 0
    assert set(secret_names(instance.stack)) == set(sealed.manifest.fragments)


def test_doctor_reports_failures(instance: Instance, tmp_path: Path) -> None:
    sealed = seal(instance.stack, tmp_path, cloud_config())
    data = json.loads(sealed.manifest_path.read_text())
    data["fragments"].append(data["fragments"][0][:-2] + "-9")
    bad = tmp_path / "extra.json"
    bad.write_text(json.dumps(data))
    instance.stack.imds.faults.no_role_until = time.monotonic() + 3600

    res = instance.agent(
        "doctor", "--manifest", str(bad), "--imds-endpoint", instance.stack.imds.url
    )

    assert res.returncode == 1
    lines = res.stdout.splitlines()
    # IMDS answers; the instance profile is what is missing, and the check says what to do.
    assert lines[0].startswith("[ ok ] imds:")
    (fail,) = [i for i, line in enumerate(lines) if line.startswith("[FAIL]")]
    assert lines[fail].startswith("[FAIL] credentials: ")
    assert lines[fail + 1].startswith("       what to do: ")
    # The fragment checks that cannot run without credentials are listed, not dropped.
    skip = "[SKIP] fragments: needs the instance-profile credentials (see the credentials check)"
    assert skip in lines
    assert re.fullmatch(r"\d+ passed, \d+ warnings?, 1 failed, 1 skipped", lines[-1])


def test_doctor_sees_a_missing_fragment(instance: Instance, tmp_path: Path) -> None:
    sealed = seal(instance.stack, tmp_path, cloud_config())
    data = json.loads(sealed.manifest_path.read_text())
    ghost = data["fragments"][0][:-2] + "-9"
    data["fragments"].append(ghost)
    bad = tmp_path / "extra.json"
    bad.write_text(json.dumps(data))

    res = instance.agent("doctor", "--manifest", str(bad))

    assert res.returncode == 1
    assert f"[FAIL] fragment: {ghost}: does not exist" in res.stdout
