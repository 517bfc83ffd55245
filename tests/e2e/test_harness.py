"""Real cloud-init, in a chroot per Debian release, boots plain and sealed user data.

The harness itself is under test here as much as sealboot: plain NoCloud cloud-config must go
through all four stages cleanly before anything sealboot does can be judged.
"""

from __future__ import annotations

import json
import re
import secrets
import stat
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path

import pytest

from tests.e2e.harness import (
    STAGES,
    BootResult,
    Images,
    Instance,
    InstanceNetwork,
    NewInstance,
    e2e_releases,
    run_copies,
    warnings,
)

pytestmark = pytest.mark.e2e

SUITES = e2e_releases()  # Debian's suites, sid, and upstream releases (tests/e2e/releases.py)
SECRET_MARKER = b"SEALBOOT-E2E-SECRET-4c1d8e"

PLAIN_USERDATA = b"""#cloud-config
bootcmd:
  - mkdir -p /var/lib/e2e && echo "bootcmd $(date +%s%N)" >> /var/lib/e2e/bootcmd
write_files:
  - path: /etc/e2e/written
    content: |
      written by write_files
    permissions: '0640'
runcmd:
  - [sh, -c, 'echo "runcmd ran" > /var/lib/e2e/runcmd']
"""


def sealed_payload(token: str) -> bytes:
    """MIME user data as a kubeadm node might get: a cloud-config and a shell script, carrying
    SECRET_MARKER and *token* (the "join token") in every part."""
    secret = f"{SECRET_MARKER.decode()}-{token}"
    cloud_config = f"""#cloud-config
write_files:
  - path: /etc/e2e/secret
    permissions: '0600'
    content: |
      join-token {secret}
runcmd:
  - [sh, -c, 'mkdir -p /var/lib/e2e && echo "runcmd {secret}" > /var/lib/e2e/runcmd']
"""
    script = f"""#!/bin/sh
mkdir -p /var/lib/e2e
echo "script {secret}" > /var/lib/e2e/script
"""
    msg = MIMEMultipart()
    msg.attach(MIMEText(cloud_config, "cloud-config"))
    msg.attach(MIMEText(script, "x-shellscript"))
    return msg.as_bytes()


def places_with_secret(inst: Instance, result: BootResult, token: str) -> set[str]:
    """Every file the instance wrote, and every /run/cloud-init file, that holds the secret."""
    found: set[str] = set()
    for path, host in inst.written_files():
        data = host.read_bytes()
        if SECRET_MARKER in data or token.encode() in data:
            found.add(path)
    run = result.out_dir / "run-cloud-init"
    for host in run.rglob("*"):
        if host.is_file() and not host.is_symlink():
            data = host.read_bytes()
            if SECRET_MARKER in data or token.encode() in data:
                found.add("/run/cloud-init/" + str(host.relative_to(run)))
    return found


def assert_no_secret(blob: bytes, token: str, where: str) -> None:
    assert SECRET_MARKER not in blob, f"the secret marker is in {where}"
    assert token.encode() not in blob, f"the secret token is in {where}"


def assert_clean_boot(result: BootResult) -> None:
    """All four stages exit 0 and `cloud-init status --long` says done, without problems."""
    why = result.describe()
    assert [s.name for s in result.stages] == list(STAGES), why
    assert result.returncodes == dict.fromkeys(STAGES, 0), why
    assert result.status == "done", why
    assert result.extended_status == "done", why  # 23.4+: not "degraded done"
    assert result.status_returncode == 0, why
    assert "errors: []" in result.status_long or "errors:" not in result.status_long, why
    assert warnings(result.cloud_init_log) == [], why
    finished = result.cloud_init_data["result.json"]["v1"]
    assert finished["errors"] == [], why


def agent_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if " sealboot-agent[" in line]


# --- the harness with plain NoCloud user data, on every suite ---------------------------------


@pytest.mark.parametrize("suite", SUITES)
def test_plain_cloud_config_boots_through_all_four_stages(
    suite: str, images: Images, new_instance: NewInstance
) -> None:
    image = images.plain(suite)
    inst = new_instance(image)
    inst.seed(PLAIN_USERDATA)

    result = inst.boot()

    assert_clean_boot(result)
    upstream = image.rootfs.cloud_init_version.split("-")[0]
    assert f"Cloud-init v. {upstream}" in result.output_log, "not the suite's own cloud-init"
    assert "seed=/var/lib/cloud/seed/nocloud" in result.status_long
    assert inst.read_text("/etc/e2e/written") == "written by write_files\n"
    assert stat.S_IMODE(inst.path("/etc/e2e/written").stat().st_mode) == 0o640
    assert inst.read_text("/var/lib/e2e/runcmd") == "runcmd ran\n"
    assert len(inst.read_text("/var/lib/e2e/bootcmd").splitlines()) == 1
    assert inst.exists(f"/var/lib/cloud/instances/{inst.instance_id}/boot-finished")


@pytest.mark.parametrize("suite", SUITES)
def test_reboot_reruns_per_boot_modules_only(
    suite: str, images: Images, new_instance: NewInstance
) -> None:
    inst = new_instance(images.plain(suite))
    inst.seed(PLAIN_USERDATA)
    assert_clean_boot(inst.boot())
    inst.path("/var/lib/e2e/runcmd").unlink()

    again = inst.boot()

    assert_clean_boot(again)
    assert len(inst.read_text("/var/lib/e2e/bootcmd").splitlines()) == 2, "bootcmd: every boot"
    assert not inst.exists("/var/lib/e2e/runcmd"), "runcmd is once per instance"


@pytest.mark.parametrize("suite", SUITES)
def test_agent_runs_on_the_rootfs_python(
    suite: str, images: Images, new_instance: NewInstance
) -> None:
    image = images.with_agent(suite)
    inst = new_instance(image)

    version = inst.chroot(["sealboot-agent", "--version"])
    status = inst.chroot(["sealboot-agent", "status"])
    # The artifact's interpreter mode: the same wrapper, interpreter and extraction as a fetch.
    which = inst.chroot(
        [
            "env",
            "SHIV_INTERPRETER=1",
            "sealboot-agent",
            "-c",
            "import sys, platform, botocore, sealboot_agent.cli; "
            "print(platform.python_version(), sys.executable, botocore.__file__, "
            "sealboot_agent.cli.__file__)",
        ]
    )

    assert version.returncode == 0, version.stderr
    assert re.fullmatch(r"sealboot-agent \S+\n", version.stdout), version.stdout
    assert status.returncode == 0, status.stdout + status.stderr
    assert which.returncode == 0, which.stderr
    py, executable, botocore_file, agent_file = which.stdout.split()
    assert py == image.rootfs.python_version
    assert executable == "/usr/bin/python3"
    extracted = "/var/cache/sealboot-agent/sealboot-agent.pyz_"
    assert botocore_file.startswith(extracted), botocore_file
    assert agent_file.startswith(extracted), agent_file
    assert not inst.path("/etc/cloud/cloud.cfg.d/96-sealboot-datasource.cfg").exists()


# --- sealed user data ---------------------------------------------------------------------------


def boot_sealed(
    suite: str, images: Images, new_instance: NewInstance, aws: InstanceNetwork, tmp_path: Path
) -> tuple[Instance, str, BootResult]:
    """Seal a secret payload with the real CLI, seed the rendered user data, boot once."""
    token = secrets.token_hex(16)
    payload = sealed_payload(token)
    sealed = aws.seal(payload, tmp_path / "seal")
    assert aws.secret_names() == sorted(sealed.manifest.fragments)
    assert SECRET_MARKER not in sealed.userdata
    assert token.encode() not in sealed.userdata
    inst = new_instance(images.with_agent(suite))
    inst.seed(sealed.userdata)
    return inst, token, inst.boot()


def expected_at_rest(inst: Instance) -> set[str]:
    """Where the secret may stay after the boot: only the files the user data itself wrote.
    (The hand-off's cleanup also removes cloud-init's scripts/runcmd, written from the sealed
    runcmd, once scripts-user has run it.)"""
    return {"/etc/e2e/secret", "/var/lib/e2e/runcmd", "/var/lib/e2e/script"}


@pytest.mark.parametrize("suite", SUITES)
def test_sealed_userdata_takes_effect_in_the_same_boot(
    suite: str, images: Images, new_instance: NewInstance, aws: InstanceNetwork, tmp_path: Path
) -> None:
    inst, token, result = boot_sealed(suite, images, new_instance, aws, tmp_path)
    secret = f"{SECRET_MARKER.decode()}-{token}"

    assert_clean_boot(result)
    # The boothook ran the agent installed in the image, on the image's python3; the sealed
    # cloud-config (init and config stages) and script (final stage) took effect in this boot.
    assert inst.read_text("/etc/e2e/secret") == f"join-token {secret}\n"
    st = inst.path("/etc/e2e/secret").stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, 0, 0)
    assert inst.read_text("/var/lib/e2e/runcmd") == f"runcmd {secret}\n"
    assert inst.read_text("/var/lib/e2e/script") == f"script {secret}\n"
    assert aws.secret_names() == [], "the fragments must be deleted"
    hits = aws.imds_hits()
    assert any(h.method == "PUT" and h.path == "/latest/api/token" for h in hits)
    assert all(h.status == 200 for h in hits), hits
    state = json.loads(inst.read_text("/var/lib/sealboot/state.json"))
    assert (state["outcome"], state["phase"]) == ("ok", "done")
    assert state["instance_id"] == inst.instance_id
    # Every agent line once in cloud-init-output.log, on cloud-init that drops (20.4, 22.4)
    # and that tees (23.4+) boothook output alike.
    lines = agent_lines(result.output_log)
    assert len(lines) >= 5, result.output_log
    assert len(lines) == len(set(lines)), "an agent log line appears twice"
    for message in ("fetched 1 fragment(s)", "deleted 1 fragment(s)", " done in "):
        assert sum(message in line for line in lines) == 1, (message, lines)
    assert not any(" ERROR" in line or " WARNING" in line for line in lines), lines
    # No secret in any log, nor in what the stages printed.
    for path in inst.files_under("/var/log"):
        assert_no_secret(path.read_bytes(), token, str(path))
    for path in result.out_dir.glob("*.out"):
        assert_no_secret(path.read_bytes(), token, str(path))
    # No plaintext left behind by the hand-off (its private copy, the cloud.cfg.d part, the
    # placed script) once the final stage is over.
    at_rest = expected_at_rest(inst) | run_copies(inst.image)
    assert places_with_secret(inst, result, token) == at_rest


@pytest.mark.parametrize("suite", SUITES)
def test_second_boot_is_a_noop_without_imds(
    suite: str, images: Images, new_instance: NewInstance, aws: InstanceNetwork, tmp_path: Path
) -> None:
    inst, token, first = boot_sealed(suite, images, new_instance, aws, tmp_path)
    assert_clean_boot(first)
    hits = len(aws.imds_hits())
    written = inst.path("/etc/e2e/secret").stat()

    second = inst.boot()

    assert_clean_boot(second)
    new = second.output_log[len(first.output_log) :]
    assert second.output_log.startswith(first.output_log)
    nothing = [line for line in new.splitlines() if "nothing to do" in line]
    assert len(nothing) == 1, new
    assert agent_lines(new) == [], "the agent must not even start"
    assert len(aws.imds_hits()) == hits, "a second boot must not touch IMDS"
    assert inst.path("/etc/e2e/secret").stat().st_mtime_ns == written.st_mtime_ns
    for path in inst.files_under("/var/log"):
        assert_no_secret(path.read_bytes(), token, str(path))
    assert places_with_secret(inst, second, token) == expected_at_rest(inst)


@pytest.mark.parametrize("suite", [s for s in SUITES if s == "bookworm"] or SUITES[:1])
def test_a_new_instance_starts_from_the_pristine_image(
    suite: str, images: Images, new_instance: NewInstance, aws: InstanceNetwork, tmp_path: Path
) -> None:
    first, _, result = boot_sealed(suite, images, new_instance, aws, tmp_path)
    assert_clean_boot(result)

    fresh = new_instance(images.with_agent(suite))

    for inst_path in (
        "/etc/e2e/secret",
        "/var/lib/sealboot/state.json",
        "/var/lib/cloud/instance",
        "/var/log/cloud-init.log",
    ):
        assert first.exists(inst_path), inst_path
        assert not fresh.exists(inst_path), inst_path
    assert list(fresh.written_files()) == []
    for layer in images.with_agent(suite).lowerdirs():
        assert not (layer / "etc/e2e").exists()
        assert not (layer / "var/lib/sealboot").exists()
