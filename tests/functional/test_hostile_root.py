"""A hostile --root and hostile manifests, through the real CLIs against the local stack.

Symlinks under --root must never carry a write out of the root; a manifest must not reach
fragments that are not its own. Each refusal has its documented exit code, and no fragment is
deleted when the refusal comes before the delete.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.functional.conftest import (
    Instance,
    assert_fragments_intact,
    assert_no_secret,
    cloud_config,
    seal,
    sealboot,
    secret_names,
)


def _everything_under(path: Path) -> list[Path]:
    return sorted(path.rglob("*"))


@pytest.mark.parametrize(
    ("link", "handoff", "code", "deleted"),
    [
        # The lock and the state come first: refused before any AWS call.
        ("var/lib/sealboot", "file", 8, False),
        ("var/lib", "cloud-init", 8, False),
        # The output is written after the fetch and before the delete.
        ("etc", "file", 8, False),
        # The cloud-init hand-off checks where its parts go before the delete.
        ("etc/cloud/cloud.cfg.d", "cloud-init", 8, False),
        ("var/lib/cloud", "cloud-init", 8, False),
    ],
)
def test_a_symlinked_directory_under_the_root_is_never_followed(
    instance: Instance, tmp_path: Path, link: str, handoff: str, code: int, deleted: bool
) -> None:
    sealed = seal(instance.stack, tmp_path, cloud_config())
    outside = tmp_path / "outside"
    outside.mkdir()
    target = instance.root / link
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(outside)

    res = instance.agent("fetch", "--manifest", str(sealed.manifest_path), "--handoff", handoff)

    assert res.returncode == code, res.stderr
    assert "is a symbolic link" in res.stderr
    assert str(target) in res.stderr
    assert _everything_under(outside) == []
    if deleted:
        assert not set(sealed.manifest.fragments) & set(secret_names(instance.stack))
    else:
        assert_fragments_intact(instance.stack, sealed)
    assert_no_secret(res.stderr, sealed.payload)


def test_a_symlinked_log_directory_costs_the_log_file_not_the_boot(
    instance: Instance, tmp_path: Path
) -> None:
    sealed = seal(instance.stack, tmp_path, cloud_config())
    outside = tmp_path / "outside"
    outside.mkdir()
    (instance.root / "var").mkdir()
    (instance.root / "var" / "log").symlink_to(outside)

    res = instance.agent("fetch", "--manifest", str(sealed.manifest_path))

    assert res.returncode == 0, res.stderr
    assert "is a symbolic link" in res.stderr
    assert "logging to stderr only" in res.stderr
    assert _everything_under(outside) == []
    assert instance.output.read_bytes() == sealed.payload
    assert not set(sealed.manifest.fragments) & set(secret_names(instance.stack))


def _with_a_fragment_of(instance: Instance, tmp_path: Path, victim_machine: str) -> Path:
    """Our manifest, with one fragment of another machine added to its list."""
    victim = seal(instance.stack, tmp_path / "victim", cloud_config(), machine=victim_machine)
    ours = seal(instance.stack, tmp_path, cloud_config())
    data = json.loads(ours.manifest_path.read_text())
    data["fragments"].append(victim.manifest.fragments[0])
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(data))
    return tampered


def test_agent_refuses_a_manifest_naming_another_machines_fragment(
    instance: Instance, tmp_path: Path
) -> None:
    (tmp_path / "victim").mkdir()
    tampered = _with_a_fragment_of(instance, tmp_path, "victim-0")
    before = secret_names(instance.stack)

    res = instance.agent("fetch", "--manifest", str(tampered))

    assert res.returncode == 2, res.stderr
    assert "victim-0" in res.stderr
    assert secret_names(instance.stack) == before
    # Refused while reading the command line: no lock, no state, no IMDS or AWS call.
    assert not (instance.root / "var").exists()


def test_sealboot_delete_refuses_a_manifest_naming_another_machines_fragment(
    instance: Instance, tmp_path: Path
) -> None:
    (tmp_path / "victim").mkdir()
    tampered = _with_a_fragment_of(instance, tmp_path, "victim-0")
    before = secret_names(instance.stack)

    res = sealboot(
        instance.stack, "delete", str(tampered), "--endpoint-url", instance.stack.moto.url
    )

    assert res.returncode == 2, res.stderr
    assert b"victim-0" in res.stderr
    assert secret_names(instance.stack) == before
