"""Unit tests of the durable writer, the state file and the run lock."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sealboot_agent.errors import StateError, WriteError
from sealboot_agent.state import (
    PHASES,
    STATE_MAX_BYTES,
    State,
    StateStore,
    confined_to,
    make_private_dirs,
    open_under,
    remove_under,
    write_durable,
)


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- write_durable -------------------------------------------------------------------------


@pytest.mark.usefixtures("permissive_umask")
def test_write_durable_creates_0600_even_with_umask_0(tmp_path: Path) -> None:
    target = tmp_path / "etc" / "secret-userdata.txt"
    write_durable(target, b"#cloud-config\n")
    assert target.read_bytes() == b"#cloud-config\n"
    assert mode(target) == 0o600
    assert target.stat().st_uid == os.getuid()
    # The umask the caller had is restored afterwards.
    assert os.umask(0) == 0


@pytest.mark.usefixtures("permissive_umask")
def test_write_durable_creates_missing_parents_0700(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "c" / "out"
    write_durable(target, b"x")
    for d in (tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "c"):
        assert mode(d) == 0o700, d


@pytest.mark.usefixtures("permissive_umask")
def test_make_private_dirs_leaves_existing_dirs_alone(tmp_path: Path) -> None:
    existing = tmp_path / "shared"
    existing.mkdir(mode=0o755)
    existing.chmod(0o755)
    make_private_dirs(existing / "new")
    assert mode(existing) == 0o755
    assert mode(existing / "new") == 0o700


def test_write_durable_replaces_atomically(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.write_bytes(b"old contents")
    target.chmod(0o644)
    with open(target, "rb") as old_handle:
        write_durable(target, b"new")
        # A reader of the old file still sees the whole old file: it was replaced, not rewritten.
        assert old_handle.read() == b"old contents"
    assert target.read_bytes() == b"new"
    assert mode(target) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_write_durable_of_large_data(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    write_durable(tmp_path / "big", data)
    assert (tmp_path / "big").read_bytes() == data


def test_write_durable_removes_a_stale_temp_file(tmp_path: Path) -> None:
    (tmp_path / ".out.sealboot-tmp").write_bytes(b"left by a crash")
    write_durable(tmp_path / "out", b"fresh")
    assert (tmp_path / "out").read_bytes() == b"fresh"
    assert os.listdir(tmp_path) == ["out"]


def test_write_error_when_parent_is_a_regular_file(tmp_path: Path) -> None:
    blocker = tmp_path / "etc"
    blocker.write_text("I am a file")
    target = blocker / "sub" / "out"
    with pytest.raises(WriteError) as info:
        write_durable(target, b"x")
    assert str(target) in info.value.message
    assert os.strerror(errno.ENOTDIR) in info.value.message
    assert info.value.exit_code == 8
    assert blocker.read_text() == "I am a file"


def test_write_error_when_target_is_a_directory(tmp_path: Path) -> None:
    target = tmp_path / "out"
    (target / "inside").mkdir(parents=True)
    with pytest.raises(WriteError, match="cannot write"):
        write_durable(target, b"x")
    assert (target / "inside").is_dir()
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_write_error_under_proc_even_as_root() -> None:
    target = Path("/proc/sys/sealboot-unit-test-does-not-exist")
    with pytest.raises(WriteError) as info:
        write_durable(target, b"x")
    assert str(target) in info.value.message


@pytest.mark.parametrize(
    ("err", "says"),
    [
        (errno.ENOSPC, "no space left on the device"),
        (errno.EDQUOT, "no space left on the device"),
        (errno.EROFS, "the file system is read-only"),
    ],
)
def test_write_error_messages_for_full_and_read_only_disks(
    err: int, says: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "out"
    target.write_bytes(b"previous")

    def failing_write(fd: int, data: object) -> int:
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(os, "write", failing_write)
    with pytest.raises(WriteError) as info:
        write_durable(target, b"new data")
    assert info.value.message == f"cannot write {target}: {says}"
    # The old file is untouched and no temp file is left behind.
    assert target.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["out"]


# --- State and StateStore ------------------------------------------------------------------


def full_state() -> State:
    return State(
        manifest_id="0" * 32,
        phase="written",
        outcome="running",
        fragments=["aws.cluster.x-k8s.io/a-0", "aws.cluster.x-k8s.io/a-1"],
        times={"started": 1.5, "written": 2.25},
        instance_id="i-0123456789abcdef0",
        region="eu-west-1",
        output="/etc/secret-userdata.txt",
        output_sha256="f" * 64,
        handoff="file",
        left_behind=["aws.cluster.x-k8s.io/a-1"],
        error={"message": "x", "exit_code": 9},
        agent_version="0.1.0",
    )


def test_state_json_round_trip() -> None:
    s = full_state()
    again = State.from_json(s.to_json())
    assert again == s
    assert json.loads(s.to_json())["v"] == 1


def test_state_reached_follows_phase_order() -> None:
    s = State(manifest_id="m", phase="written")
    assert s.reached("started")
    assert s.reached("verified")
    assert s.reached("written")
    assert not s.reached("deleted")
    assert not s.reached("done")
    assert PHASES[0] == "started"
    assert PHASES[-1] == "done"


def test_store_save_and_load(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "var" / "lib" / "sealboot", wall=lambda: 1234.56789)
    assert store.load() is None
    s = State(manifest_id="abc")
    store.save(s, phase="fetched")
    assert s.phase == "fetched"
    assert s.times["fetched"] == pytest.approx(1234.568)
    loaded = store.load()
    assert loaded == s
    assert mode(store.file) == 0o600
    assert mode(store.directory) == 0o700


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        "",
        '{"v": 2, "phase": "done", "manifest_id": "x"}',
        '{"v": 1, "phase": "exploded", "manifest_id": "x"}',
        '{"v": 1, "phase": "done"}',
    ],
)
def test_corrupt_state_raises_state_error(text: str, tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.file.write_text(text)
    with pytest.raises(StateError) as info:
        store.load()
    assert str(store.file) in info.value.message
    assert "corrupt" in info.value.message
    assert info.value.exit_code == 10


@pytest.mark.parametrize("text", ["[]", "null", "1", '"text"'])
def test_state_that_is_json_but_not_an_object_raises_state_error(text: str, tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.file.write_text(text)
    with pytest.raises(StateError):
        store.load()


def test_unreadable_state_raises_state_error(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.file.mkdir()  # reading a directory fails even as root
    with pytest.raises(StateError, match="cannot read"):
        store.load()


# --- the lock ------------------------------------------------------------------------------


def test_lock_times_out_when_another_holder_has_it(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    make_private_dirs(store.directory)
    fd = os.open(str(store.directory / "lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        entered = False
        start = time.monotonic()
        with pytest.raises(StateError, match="holds the lock"), store.lock(wait=0.3):
            entered = True
        elapsed = time.monotonic() - start
        assert not entered
        assert 0.25 <= elapsed < 1.5
    finally:
        os.close(fd)


def test_lock_is_exclusive_while_held_and_released_after(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    with store.lock(wait=0.0):
        assert mode(store.directory / "lock") == 0o600
        fd = os.open(str(store.directory / "lock"), os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    fd = os.open(str(store.directory / "lock"), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


def test_lock_released_when_the_body_raises(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    with pytest.raises(RuntimeError), store.lock(wait=0.0):
        raise RuntimeError("boom")
    with store.lock(wait=0.0):
        pass


def test_lock_waits_with_the_injected_clock(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    make_private_dirs(store.directory)
    fd = os.open(str(store.directory / "lock"), os.O_RDWR | os.O_CREAT, 0o600)
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(StateError), store.lock(wait=5.0, clock=lambda: now[0], sleep=sleep):
            pass
    finally:
        os.close(fd)
    assert slept
    assert sum(slept) == pytest.approx(5.0, abs=0.2)


# --- hostile state files and lock paths ----------------------------------------------------


def valid_state_dict() -> dict[str, object]:
    data: dict[str, object] = json.loads(full_state().to_json())
    return data


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("phase", 3),
        ("phase", ["done"]),
        ("fragments", {"a": 1}),
        ("fragments", [1, 2]),
        ("left_behind", "aws.cluster.x-k8s.io/a-1"),
        ("times", ["started", 1.5]),
        ("times", {"started": "soon"}),
        ("times", {"started": True}),
        ("times", {"started": -1}),
        ("times", {"started": 1e300}),
        ("manifest_id", 7),
        ("outcome", None),
        ("instance_id", ["i-0"]),
        ("output", 0),
        ("error", ["boom"]),
        ("agent_version", 1),
        ("v", True),
        ("v", 1.0),
    ],
)
def test_state_with_a_field_of_the_wrong_type_is_a_state_error(
    key: str, value: object, tmp_path: Path
) -> None:
    data = valid_state_dict()
    data[key] = value
    store = StateStore(tmp_path)
    store.file.write_text(json.dumps(data))
    with pytest.raises(StateError) as info:
        store.load()
    assert info.value.exit_code == 10
    assert "corrupt" in info.value.message


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity"])
def test_state_with_a_non_finite_time_is_a_state_error(number: str, tmp_path: Path) -> None:
    text = full_state().to_json().replace('"started": 1.5', f'"started": {number}')
    assert number in text
    store = StateStore(tmp_path)
    store.file.write_text(text)
    with pytest.raises(StateError, match="corrupt"):
        store.load()


def test_deeply_nested_state_is_a_state_error(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.file.write_text("[" * 100_000)
    with pytest.raises(StateError, match="corrupt"):
        store.load()


def test_state_that_is_not_utf8_is_a_state_error(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.file.write_bytes(b"\xff\xfe{}")
    with pytest.raises(StateError, match="corrupt"):
        store.load()


def test_oversized_state_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    with open(store.file, "wb") as fh:
        fh.truncate(STATE_MAX_BYTES * 4)  # sparse: costs no disk
    with pytest.raises(StateError, match="corrupt.*over"):
        store.load()


def test_state_file_that_is_a_fifo_does_not_hang(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    os.mkfifo(store.file)
    with pytest.raises(StateError, match="not a regular file"):
        store.load()


def test_lock_path_that_is_a_directory_is_a_state_error(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    (store.directory / "lock").mkdir(parents=True)
    with pytest.raises(StateError) as info, store.lock(wait=0.0):
        pass
    assert info.value.exit_code == 10
    assert "lock" in info.value.message


def test_lock_path_that_is_a_fifo_is_a_state_error(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    store.directory.mkdir()
    os.mkfifo(store.directory / "lock")
    with pytest.raises(StateError, match="not a regular file"), store.lock(wait=0.0):
        pass


def test_lock_that_is_a_symlink_is_never_followed(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    store.directory.mkdir()
    victim = tmp_path / "victim"
    (store.directory / "lock").symlink_to(victim)
    with pytest.raises(StateError, match="lock"), store.lock(wait=0.0):
        pass
    assert not victim.exists()


def test_state_directory_that_cannot_be_created_is_a_state_error(tmp_path: Path) -> None:
    (tmp_path / "var").write_text("a file where a directory belongs")
    store = StateStore(tmp_path / "var" / "lib" / "sealboot")
    with pytest.raises(StateError, match="cannot open the lock"), store.lock(wait=0.0):
        pass


# --- nothing written under a root leaves it through a symlink -------------------------------


@pytest.fixture
def escape(tmp_path: Path) -> tuple[Path, Path]:
    """A root whose var/lib is a symlink to a directory outside it."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "var").mkdir(parents=True)
    outside.mkdir()
    (root / "var" / "lib").symlink_to(outside)
    return root, outside


def test_write_durable_refuses_a_symlinked_parent_under_a_root(escape: tuple[Path, Path]) -> None:
    root, outside = escape
    target = root / "var" / "lib" / "sealboot" / "state.json"
    with pytest.raises(WriteError) as info:
        write_durable(target, b"x", root=root)
    assert info.value.exit_code == 8
    assert str(target) in info.value.message
    assert "lib is a symbolic link" in info.value.message
    assert list(outside.iterdir()) == []


def test_a_relative_symlink_is_refused_too(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "cloud").symlink_to("../../")  # relative, and out of the root
    with pytest.raises(WriteError, match="symbolic link"):
        write_durable(root / "etc" / "cloud" / "x.cfg", b"x", root=root)
    assert not (tmp_path / "x.cfg").exists()


def test_confined_to_applies_to_writes_without_an_explicit_root(escape: tuple[Path, Path]) -> None:
    root, outside = escape
    target = root / "var" / "lib" / "sealboot" / "userdata"
    with confined_to(root):
        with pytest.raises(WriteError, match="symbolic link"):
            write_durable(target, b"x")
        with pytest.raises(WriteError, match="symbolic link"):
            make_private_dirs(target.parent)
        store = StateStore(target.parent)
        with pytest.raises(WriteError, match="symbolic link"):
            store.save(State(manifest_id="m"))
        with pytest.raises(WriteError, match="symbolic link"), store.lock(wait=0.0):
            pass
        with pytest.raises(StateError, match="symbolic link"):
            store.load()
    assert list(outside.iterdir()) == []
    # Outside the block, the default root is / again, where symlinks are followed.
    write_durable(target, b"x")
    assert (outside / "sealboot" / "userdata").read_bytes() == b"x"


def test_the_root_itself_may_be_reached_through_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    write_durable(link / "etc" / "out", b"x", root=link)
    assert (real / "etc" / "out").read_bytes() == b"x"
    assert mode(real / "etc") == 0o700


def test_symlinks_are_followed_when_the_root_is_slash(tmp_path: Path) -> None:
    # Under / a symlink cannot lead out of the root; real systems have /var/run -> /run.
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    write_durable(tmp_path / "link" / "out", b"x", root=Path("/"))
    assert (real / "out").read_bytes() == b"x"


def test_a_symlink_at_the_target_is_replaced_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "out").symlink_to(victim)
    write_durable(tmp_path / "root" / "out", b"new", root=tmp_path / "root")
    assert victim.read_bytes() == b"keep"
    assert not (tmp_path / "root" / "out").is_symlink()
    assert (tmp_path / "root" / "out").read_bytes() == b"new"


@pytest.mark.parametrize("inside", ["../outside/x", "etc/../../outside/x"])
def test_dot_dot_never_leaves_the_root(inside: str, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "outside").mkdir()
    with pytest.raises(WriteError, match="'..'"):
        write_durable(root / inside, b"x", root=root)
    assert list((tmp_path / "outside").iterdir()) == []


def test_a_path_outside_the_root_is_refused(tmp_path: Path) -> None:
    with pytest.raises(WriteError, match="not under the root"):
        write_durable(tmp_path / "elsewhere" / "x", b"x", root=tmp_path / "root")


def test_open_under_never_follows_the_file_itself(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / "log").symlink_to(victim)
    with pytest.raises(OSError, match="symbolic links") as info:
        open_under(tmp_path / "log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, root=tmp_path)
    assert info.value.errno == errno.ELOOP
    assert victim.read_text() == "keep"


def test_remove_under_does_not_reach_through_a_symlink(escape: tuple[Path, Path]) -> None:
    root, outside = escape
    (outside / "sealboot-failed").write_text("outside")
    with pytest.raises(WriteError, match="symbolic link"):
        remove_under(root / "var" / "lib" / "sealboot-failed", root=root)
    assert (outside / "sealboot-failed").exists()
    remove_under(root / "var" / "nothing" / "here", root=root)  # missing is fine
    (root / "var" / "f").write_text("x")
    remove_under(root / "var" / "f", root=root)
    assert not (root / "var" / "f").exists()
