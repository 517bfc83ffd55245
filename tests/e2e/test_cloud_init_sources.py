"""scripts/e2e/cloud_init_sources.py and the release list built from its answer (no root, fast)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.e2e import releases
from tests.e2e.releases import SOURCES_SCRIPT, UPSTREAM, Sources, release_ids

RECORDS = SOURCES_SCRIPT.parent / "cloud-init"


def run_script(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SEALBOOT_")}
    return subprocess.run(
        [sys.executable, str(SOURCES_SCRIPT), *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def fake_archive(version: str, marker: bytes) -> bytes:
    """A tar.gz shaped like the release archives: cloud-init-VERSION/cloudinit/version.py."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(f"cloud-init-{version}/cloudinit/version.py")
        info.size = len(marker)
        tar.addfile(info, io.BytesIO(marker))
    return gzip.compress(buf.getvalue(), mtime=0)


@pytest.fixture
def records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the script with its own records, so a test may choose the checksums."""
    scripts = tmp_path / "repo" / "scripts" / "e2e"
    shutil.copytree(RECORDS, scripts / "cloud-init")
    shutil.copy(SOURCES_SCRIPT, scripts / SOURCES_SCRIPT.name)
    monkeypatch.setattr(sys.modules[__name__], "SOURCES_SCRIPT", scripts / SOURCES_SCRIPT.name)
    return scripts / "cloud-init"


def test_the_records_name_the_four_releases_with_a_checksum_each() -> None:
    lines = [
        line.split()
        for line in (RECORDS / "RELEASES").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert [v for v, *_ in lines] == list(UPSTREAM)
    assert all(len(commit) == 40 and int(commit, 16) for _, _, commit, *_ in lines)
    sums = [line.split()[1] for line in (RECORDS / "SHA256SUMS").read_text().splitlines()]
    assert sorted(sums) == sorted(f"cloud-init-{v}.tar.gz" for v in UPSTREAM)


def test_a_matching_archive_is_extracted_once_and_reused(records: Path, tmp_path: Path) -> None:
    archives, dest = tmp_path / "archives", tmp_path / "dest"
    archives.mkdir()
    data = fake_archive("24.4.1", b"version = '24.4.1'\n")
    (archives / "cloud-init-24.4.1.tar.gz").write_bytes(data)
    sums = (records / "SHA256SUMS").read_text()
    want = hashlib.sha256(data).hexdigest()
    lines = [
        f"{want}  cloud-init-24.4.1.tar.gz" if line.endswith("24.4.1.tar.gz") else line
        for line in sums.splitlines()
    ]
    (records / "SHA256SUMS").write_text("\n".join(lines) + "\n")

    first = run_script("--json", "--archives", str(archives), "--dest", str(dest), "24.4.1")
    stamp = dest / "24.4.1" / ".sealboot-source"
    mtime = stamp.stat().st_mtime_ns
    again = run_script("--offline", "--archives", str(archives), "--dest", str(dest), "24.4.1")

    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == {
        "sources": {"24.4.1": str(dest / "24.4.1")},
        "missing": {},
        "errors": {},
    }
    assert (dest / "24.4.1/cloudinit/version.py").read_bytes() == b"version = '24.4.1'\n"
    assert stamp.read_text() == f"archive sha256 {want}\n"
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"24.4.1 {dest / '24.4.1'}\n"
    assert stamp.stat().st_mtime_ns == mtime, "extracted again"


def test_an_archive_that_is_not_the_recorded_one_is_refused(tmp_path: Path) -> None:
    archives, dest = tmp_path / "archives", tmp_path / "dest"
    archives.mkdir()
    (archives / "cloud-init-22.2.2.tar.gz").write_bytes(fake_archive("22.2.2", b"evil\n"))

    res = run_script("--json", "--archives", str(archives), "--dest", str(dest), "22.2.2")

    assert res.returncode == 3, res.stderr
    answer = json.loads(res.stdout)
    assert answer["sources"] == {}
    assert "recorded" in answer["errors"]["22.2.2"], answer
    assert not (dest / "22.2.2").exists()


def test_offline_without_archives_or_cache_is_missing(tmp_path: Path) -> None:
    res = run_script(
        "--json", "--offline", "--archives", str(tmp_path), "--dest", str(tmp_path / "d")
    )

    assert res.returncode == 1
    answer = json.loads(res.stdout)
    assert answer["sources"] == {}
    assert answer["errors"] == {}
    assert sorted(answer["missing"]) == sorted(UPSTREAM)
    assert "offline" in answer["missing"]["24.1.7"]


def test_a_clone_whose_tag_is_another_commit_is_refused(tmp_path: Path) -> None:
    if shutil.which("git") is None:
        pytest.fail("git is needed for the online path of cloud_init_sources.py")
    repo = tmp_path / "mirror"
    git = ["git", "-C", str(repo), "-c", "user.email=e2e@example.invalid", "-c", "user.name=e2e"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "cloudinit").mkdir()
    (repo / "cloudinit" / "version.py").write_text("not upstream\n")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "not upstream"], check=True)
    subprocess.run([*git, "tag", "23.4.4"], check=True)

    res = run_script(
        "--json",
        "--archives",
        str(tmp_path),  # no archive there: the clone is the only way
        "--dest",
        str(tmp_path / "d"),
        "23.4.4",
        env={"SEALBOOT_CLOUD_INIT_GIT": f"file://{repo}"},
    )

    assert res.returncode == 3, res.stderr
    why = json.loads(res.stdout)["errors"]["23.4.4"]
    assert "recorded 4fa5968fa22c11c8c42302af1e2c7db6041e41e5" in why
    assert not (tmp_path / "d" / "23.4.4").exists()


def test_without_sources_upstream_releases_are_left_out_loudly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    missing = dict.fromkeys(UPSTREAM, "no archives, offline")
    monkeypatch.setattr(releases, "upstream_sources", lambda: Sources({}, missing, {}))
    monkeypatch.delenv("SEALBOOT_E2E_RELEASES", raising=False)
    monkeypatch.delenv("CI", raising=False)
    notices: list[str] = []

    ids = release_ids(["bookworm"], notices)

    assert ids == ["bookworm", "sid"]
    assert len(notices) == 1
    assert "22.2.2, 23.4.4, 24.1.7, 24.4.1" in notices[0]
    assert "SEALBOOT_CLOUD_INIT_SOURCES" in notices[0]


def test_in_ci_missing_sources_keep_the_releases_so_their_tests_fail(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sources = Sources({}, {"24.4.1": "no archives, offline"}, {})
    monkeypatch.setattr(releases, "upstream_sources", lambda: sources)
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("SEALBOOT_E2E_RELEASES", "trixie 24.4.1")
    notices: list[str] = []

    assert release_ids(["bookworm"], notices) == ["trixie", "24.4.1 (RHEL 9.6-10)"]
    assert notices == []
    with pytest.raises(pytest.fail.Exception, match="24.4.1 sources: no archives, offline"):
        sources.tree("24.4.1")
