"""The cloud-init hand-off the boothook uses: parts placed for this boot, or refused up front."""

from __future__ import annotations

import gzip
import shlex
import stat
import subprocess
from collections.abc import Callable
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path

import pytest

from tests.functional.conftest import (
    BIN,
    SECRET_MARKER,
    Instance,
    assert_fragments_intact,
    assert_no_secret,
    cloud_config,
    seal,
    secret_names,
)


def _mime(*parts: tuple[str, str, str]) -> bytes:
    outer = MIMEMultipart()
    for subtype, name, body in parts:
        part = MIMEText(body, subtype)
        part.add_header("Content-Disposition", "attachment", filename=name)
        outer.attach(part)
    return outer.as_bytes()


CONFIG = "#cloud-config\nruncmd:\n  - echo " + SECRET_MARKER.decode() + "\n"
SCRIPT = "#!/bin/sh\necho script " + SECRET_MARKER.decode() + "\n"
HOOK = '#cloud-boothook\n#!/bin/sh\necho "$INSTANCE_ID" > nested-boothook-ran\n'


def test_mime_parts_are_placed_for_this_boot(instance: Instance, tmp_path: Path) -> None:
    payload = _mime(
        ("cloud-config", "config.yaml", CONFIG),
        ("x-shellscript", "setup.sh", SCRIPT),
        ("cloud-boothook", "early.sh", HOOK),
    )
    sealed = seal(instance.stack, tmp_path, payload)

    res = instance.boot(sealed.userdata_path)

    assert res.returncode == 0, instance.log
    (cfg,) = instance.cloud_config_parts()
    assert cfg.read_text() == CONFIG
    scripts = sorted(p.name for p in instance.scripts.iterdir())
    assert scripts == ["setup.sh", "~sealboot-cleanup"]
    script = instance.scripts / "setup.sh"
    assert script.read_text() == SCRIPT
    assert stat.S_IMODE(script.stat().st_mode) == 0o700
    ran = instance.root / "nested-boothook-ran"
    assert ran.read_text().strip() == instance.stack.identity.instance_id
    assert secret_names(instance.stack) == []
    assert "1 cloud-config, 1 script, 1 boothook part(s)" in instance.log
    assert_no_secret(instance.log, payload)


def test_cleanup_script_removes_every_plaintext_copy(instance: Instance, tmp_path: Path) -> None:
    payload = _mime(("cloud-config", "c", CONFIG), ("x-shellscript", "s.sh", SCRIPT))
    sealed = seal(instance.stack, tmp_path, payload)
    assert instance.boot(sealed.userdata_path).returncode == 0
    cleanup = instance.scripts / "~sealboot-cleanup"
    assert sorted(p.name for p in instance.scripts.iterdir())[-1] == cleanup.name, "runs last"

    # It runs inside the instance (the e2e tests run it for real); here, check what it removes.
    rm = next(line for line in cleanup.read_text().splitlines() if line.startswith("rm "))
    removed = set(shlex.split(rm)[3:])
    placed = {"/" + str(p.relative_to(instance.root)) for p in instance.cloud_config_parts()}
    placed |= {
        "/" + str(p.relative_to(instance.root)) for p in instance.scripts.iterdir() if p != cleanup
    }
    runcmd = f"/var/lib/cloud/instances/{instance.stack.identity.instance_id}/scripts/runcmd"
    # CONFIG has a runcmd, which cloud-init copies into scripts/runcmd: that goes too.
    assert removed == placed | {"/var/lib/sealboot/userdata", "$0", runcmd}


def test_gzipped_user_data_is_handed_off(instance: Instance, tmp_path: Path) -> None:
    plain = cloud_config(3000)
    sealed = seal(instance.stack, tmp_path, gzip.compress(plain))

    res = instance.boot(sealed.userdata_path)

    assert res.returncode == 0, instance.log
    assert [p.read_bytes() for p in instance.cloud_config_parts()] == [plain]


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"## template: jinja\n#cloud-config\nhostname: {{ v1.instance_id }}\n", "jinja"),
        (b"#include\nhttps://example.invalid/user-data\n", "#include"),
        (
            b"#cloud-config\nmerge_how: dict(recurse_array)+list(append)\nruncmd: [id]\n",
            "merge_how",
        ),
        (b"\x00\x01 binary junk", "content type the boothook hand-off cannot give"),
    ],
    ids=["jinja", "include", "merge_how", "unknown"],
)
def test_unsupported_user_data_is_refused_before_any_delete(
    instance: Instance, tmp_path: Path, payload: bytes, why: str
) -> None:
    sealed = seal(instance.stack, tmp_path, payload)

    res = instance.boot(sealed.userdata_path)

    assert res.returncode == 11
    assert why in instance.log
    assert "nothing was deleted" in instance.log
    assert_fragments_intact(instance.stack, sealed)
    assert not instance.private.exists()
    assert instance.cloud_config_parts() == []
    failed = instance.scripts / "sealboot-failed"
    assert failed.exists(), "a failing user script makes cloud-init status say error"
    run = subprocess.run(["sh", str(failed)], capture_output=True, text=True, check=False)
    assert run.returncode == 1
    assert "sealboot:" in run.stderr


def test_a_failed_fetch_is_made_visible_then_cleared(instance: Instance, tmp_path: Path) -> None:
    sealed = seal(instance.stack, tmp_path, cloud_config())
    name = sealed.manifest.fragments[0]
    sm = instance.stack.secrets()
    good = sm.get_secret_value(SecretId=name)["SecretBinary"]
    sm.put_secret_value(SecretId=name, SecretBinary=b"\x1f\x8b" + bytes(40))

    assert instance.boot(sealed.userdata_path).returncode == 6
    failed = instance.scripts / "sealboot-failed"
    assert "(exit 6)" in failed.read_text()

    sm.put_secret_value(SecretId=name, SecretBinary=good)
    assert instance.boot(sealed.userdata_path).returncode == 0
    assert not failed.exists()


def test_capa_handoff_keeps_the_legacy_layout(instance: Instance, tmp_path: Path) -> None:
    payload = cloud_config()
    sealed = seal(instance.stack, tmp_path, payload, "--handoff", "capa")
    rendered = gzip.decompress(sealed.userdata_path.read_bytes()).decode()
    assert "Content-Type: text/x-include-url" in rendered
    assert "file:///etc/secret-userdata.txt" in rendered

    res = instance.boot(sealed.userdata_path)

    assert res.returncode == 0, instance.log
    assert instance.output.read_bytes() == payload
    assert instance.cloud_config_parts() == []
    assert "would restart cloud-init" in instance.log
    assert secret_names(instance.stack) == []


REBOOT_PAYLOAD = b"#cloud-config\nruncmd: [id]\n# " + SECRET_MARKER + b"\n"


def _handed_over_once(
    instance: Instance, tmp_path: Path
) -> Callable[[], subprocess.CompletedProcess[bytes]]:
    """Seal, fetch once with --handoff stdout, remove our copy as the cleanup script does."""
    sealed = seal(instance.stack, tmp_path, REBOOT_PAYLOAD)
    argv = [str(BIN / "sealboot-agent"), "fetch", "--handoff", "stdout", "--root"]
    argv += [str(instance.root), "--manifest", str(sealed.manifest_path)]
    argv += ["--instance-id", instance.stack.identity.instance_id]

    def fetch() -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            argv, env=instance.env(), capture_output=True, timeout=120, check=False
        )

    first = fetch()
    assert first.returncode == 0, first.stderr
    assert first.stdout == REBOOT_PAYLOAD
    (instance.root / "var/lib/sealboot/userdata").unlink()
    return fetch


def test_stdout_hand_off_after_a_reboot_serves_cloud_inits_verified_copy(
    instance: Instance, tmp_path: Path
) -> None:
    # A reboot in datasource mode: the cleanup script removed our copy after the first boot, and
    # cloud-init (22.4, 25.1: Ec2 cannot check the instance id) rediscovers the datasource.
    fetch = _handed_over_once(instance, tmp_path)
    iid = instance.stack.identity.instance_id
    cloud_init_copy = instance.root / f"var/lib/cloud/instances/{iid}/user-data.txt"
    cloud_init_copy.write_bytes(REBOOT_PAYLOAD)

    again = fetch()

    assert again.returncode == 0, again.stderr
    assert again.stdout == REBOOT_PAYLOAD
    assert_no_secret(again.stderr.decode(errors="replace"), REBOOT_PAYLOAD)

    cloud_init_copy.write_bytes(REBOOT_PAYLOAD + b"# changed\n")
    changed = fetch()
    assert changed.returncode != 0
    assert changed.stdout == b""
    assert b"does not match the digest" in changed.stderr


def test_stdout_hand_off_after_a_reboot_follows_no_symlink_out_of_the_root(
    instance: Instance, tmp_path: Path
) -> None:
    fetch = _handed_over_once(instance, tmp_path)
    iid = instance.stack.identity.instance_id
    outside = tmp_path / "outside-user-data.txt"
    outside.write_bytes(REBOOT_PAYLOAD)
    (instance.root / f"var/lib/cloud/instances/{iid}/user-data.txt").symlink_to(outside)

    again = fetch()

    assert again.returncode != 0
    assert again.stdout == b""
    assert b"handed over already" in again.stderr
