"""Unit tests of the hand-off objects: prepare refuses, deliver writes, failures are reported."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from sealboot_agent.cli import build_parser
from sealboot_agent.config import PRIVATE_OUTPUT, AgentConfig
from sealboot_agent.errors import ServiceError, StateError, UnsupportedUserData
from sealboot_agent.handoff import (
    FAILED_SCRIPT,
    HANDOFFS,
    cloud_init_instance_id,
)
from sealboot_agent.state import State, write_durable
from sealboot_agent.wire import Manifest, sha256_hex

IID = "i-0123456789abcdef0"
MANIFEST = Manifest.capa("0b8f2f6e-0000-4000-8000-000000000000", 1, region="eu-west-1")
DATA = b"#cloud-config\nruncmd: [id]\n"


def config(root: Path, handoff: str, **kw: object) -> AgentConfig:
    return AgentConfig(
        manifest=MANIFEST,
        root=root,
        handoff=handoff,
        output=HANDOFFS[handoff].default_output,
        cloud_init_instance_id=IID,
        **kw,  # type: ignore[arg-type]
    )


def failed_script(root: Path) -> Path:
    return root / "var/lib/cloud/instances" / IID / "scripts" / FAILED_SCRIPT


def stdout() -> tuple[io.TextIOWrapper, io.BytesIO]:
    """A text stream over a binary buffer, as sys.stdout is, and that buffer."""
    raw = io.BytesIO()
    return io.TextIOWrapper(raw, encoding="utf-8"), raw


@pytest.mark.parametrize("name", sorted(HANDOFFS))
def test_every_registered_handoff_is_a_cli_choice(name: str) -> None:
    args = build_parser().parse_args(["fetch", "--prefix", "p", "--count", "1", "--handoff", name])
    assert args.handoff == name


def test_stdout_delivers_the_payload_it_is_given_without_reading_the_file(
    tmp_path: Path,
) -> None:
    out, raw = stdout()
    state = State(manifest_id="m", fragments=[], output=PRIVATE_OUTPUT)
    HANDOFFS["stdout"].deliver(config(tmp_path, "stdout"), state, DATA, out)
    assert raw.getvalue() == DATA
    assert not (tmp_path / PRIVATE_OUTPUT.lstrip("/")).exists()


def test_stdout_after_an_earlier_hand_off_reads_the_verified_copy(tmp_path: Path) -> None:
    cfg = config(tmp_path, "stdout")
    write_durable(cfg.path(cfg.output), DATA, root=tmp_path)
    state = State(manifest_id="m", fragments=[], output=cfg.output, output_sha256=sha256_hex(DATA))
    out, raw = stdout()
    HANDOFFS["stdout"].deliver(cfg, state, None, out)
    assert raw.getvalue() == DATA


def test_stdout_refuses_a_copy_that_changed_since_it_was_written(tmp_path: Path) -> None:
    cfg = config(tmp_path, "stdout")
    write_durable(cfg.path(cfg.output), b"#cloud-config\n{}\n", root=tmp_path)
    state = State(manifest_id="m", fragments=[], output=cfg.output, output_sha256=sha256_hex(DATA))
    with pytest.raises(StateError):
        HANDOFFS["stdout"].deliver(cfg, state, None, stdout()[0])


def test_stdout_without_a_binary_buffer_writes_text(tmp_path: Path) -> None:
    out = io.StringIO()
    state = State(manifest_id="m", fragments=[], output=PRIVATE_OUTPUT)
    HANDOFFS["stdout"].deliver(config(tmp_path, "stdout"), state, DATA, out)
    assert out.getvalue() == DATA.decode()


@pytest.mark.parametrize("name", ["file", "none", "capa", "cloud-init"])
def test_only_stdout_writes_to_standard_output(tmp_path: Path, name: str) -> None:
    out, raw = stdout()
    state = State(manifest_id="m", fragments=[], output=PRIVATE_OUTPUT)
    HANDOFFS[name].deliver(config(tmp_path, name), state, DATA, out)
    out.flush()
    assert raw.getvalue() == b""


def test_cloud_init_reports_a_failure_as_a_failing_user_script(tmp_path: Path) -> None:
    HANDOFFS["cloud-init"].report_failure(config(tmp_path, "cloud-init"), ServiceError("boom"))
    script = failed_script(tmp_path)
    assert b"boom (exit 7)" in script.read_bytes()
    assert os.access(script, os.X_OK)


@pytest.mark.parametrize("name", ["file", "none", "capa", "stdout"])
def test_other_handoffs_leave_cloud_init_alone_on_failure(tmp_path: Path, name: str) -> None:
    HANDOFFS[name].report_failure(config(tmp_path, name), ServiceError("boom"))
    assert not failed_script(tmp_path).exists()


def test_cloud_init_without_an_instance_id_reports_nothing(tmp_path: Path) -> None:
    cfg = AgentConfig(manifest=MANIFEST, root=tmp_path, handoff="cloud-init")
    HANDOFFS["cloud-init"].report_failure(cfg, ServiceError("boom"))
    assert not (tmp_path / "var/lib/cloud/instances").exists()


def test_cloud_init_prepare_refuses_before_placing_anything(tmp_path: Path) -> None:
    cfg = config(tmp_path, "cloud-init")
    with pytest.raises(UnsupportedUserData):
        HANDOFFS["cloud-init"].prepare(cfg, b"#include\nhttp://example.com/x\n", IID)
    assert list((tmp_path / "etc/cloud/cloud.cfg.d").glob("*")) == []


def test_cloud_init_apply_places_the_cloud_config_and_clears_an_old_failure(
    tmp_path: Path,
) -> None:
    cfg = config(tmp_path, "cloud-init")
    HANDOFFS["cloud-init"].report_failure(cfg, ServiceError("earlier"))
    prepared = HANDOFFS["cloud-init"].prepare(cfg, DATA, IID)
    HANDOFFS["cloud-init"].apply(cfg, prepared)
    placed = list((tmp_path / "etc/cloud/cloud.cfg.d").iterdir())
    assert [p.read_bytes() for p in placed] == [DATA]
    assert not failed_script(tmp_path).exists()


def test_instance_id_comes_from_the_config_first(tmp_path: Path) -> None:
    assert cloud_init_instance_id(config(tmp_path, "cloud-init")) == IID


def test_instance_id_falls_back_to_cloud_inits_instance_link(tmp_path: Path) -> None:
    link = tmp_path / "var/lib/cloud/instance"
    link.parent.mkdir(parents=True)
    link.symlink_to(f"/var/lib/cloud/instances/{IID}/")
    cfg = AgentConfig(manifest=MANIFEST, root=tmp_path)
    assert cloud_init_instance_id(cfg) == IID


def test_instance_id_is_none_without_either(tmp_path: Path) -> None:
    assert cloud_init_instance_id(AgentConfig(manifest=MANIFEST, root=tmp_path)) is None
