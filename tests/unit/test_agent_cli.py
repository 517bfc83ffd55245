"""Unit tests of the sealboot-agent CLI: usage errors, config precedence, logging, status."""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import logging
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from sealboot_agent.cli import build_config, build_parser, main
from sealboot_agent.config import DEFAULT_DEADLINE, DEFAULT_IMDS_ENDPOINT, DEFAULT_OUTPUT
from sealboot_agent.errors import UsageError
from sealboot_agent.logs import configure_logging
from sealboot_agent.state import State, StateStore
from sealboot_agent.wire import MANIFEST_MAX_BYTES, Manifest

MANIFEST = Manifest(
    backend="secrets-manager",
    format="native",
    fragments=("aws.cluster.x-k8s.io/ns/c1/m1/tok-0",),
    region="eu-west-1",
    sha256=hashlib.sha256(b"s").hexdigest(),
    labels={"namespace": "ns", "cluster": "c1", "machine": "m1"},
)
MJSON = MANIFEST.to_json()

# main() changes the umask and log handlers of the test process; undo both.
pytestmark = pytest.mark.usefixtures("restore_process_state")


def run(argv: list[str], env: dict[str, str] | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, env or {}, out, err)
    return code, out.getvalue(), err.getvalue()


# --- usage errors --------------------------------------------------------------------------


def test_fetch_without_manifest_or_prefix_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run(["fetch"])
    assert code == 2
    # argparse reports on the process stderr.
    captured = capsys.readouterr()
    assert "--manifest" in captured.err + err
    assert "--prefix" in captured.err + err


def test_argparse_usage_errors_reach_the_given_stderr() -> None:
    code, _, err = run(["fetch"])
    assert code == 2
    assert "--manifest" in err


def test_no_command_is_a_usage_error() -> None:
    code, _, _ = run([])
    assert code == 2


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["fetch", "--prefix", "aws.cluster.x-k8s.io/u"], "--prefix needs --count"),
        (["fetch", "--manifest", MJSON, "--count", "2"], "--count goes with --prefix"),
        (["fetch", "--manifest", "{not json"], "not valid JSON"),
        (["fetch", "--manifest", '{"v": 1}'], "bad manifest"),
        (["fetch", "--manifest", MJSON, "--output", "etc/secret"], "absolute path"),
        (["fetch", "--manifest", MJSON, "--max-size", "0"], "--max-size"),
        (["fetch", "--manifest", MJSON, "--endpoint-url", "ftp://x"], "endpoint URL"),
        (["fetch", "--manifest", MJSON, "--deadline", "soon"], "not a number"),
        (["fetch", "--manifest", MJSON, "--deadline", "0"], "between"),
        (["fetch", "--prefix", "bad name", "--count", "1"], "bad manifest"),
        (["fetch", "--prefix", "aws.cluster.x-k8s.io/u", "--count", "0"], "count"),
    ],
)
def test_usage_errors_exit_2_with_a_message(argv: list[str], says: str) -> None:
    code, out, err = run(argv)
    assert code == 2
    assert out == ""
    assert err.startswith("sealboot-agent: error: ")
    assert says in err
    assert "what to do:" in err


def test_unreadable_manifest_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    code, _, err = run(["fetch", "--manifest", str(missing)])
    assert code == 2
    assert str(missing) in err


def test_version_exits_0() -> None:
    code, out, _ = run(["--version"])
    assert code == 0
    assert "sealboot-agent" in out


# --- configuration precedence ---------------------------------------------------------------


def test_defaults_when_neither_cli_nor_env() -> None:
    cfg = build_config(build_parser().parse_args(["fetch", "--manifest", MJSON]), {})
    assert cfg.manifest == MANIFEST
    assert cfg.region is None
    assert cfg.target.region == "eu-west-1"  # from the manifest
    assert cfg.endpoint_url is None
    assert cfg.imds_endpoint == DEFAULT_IMDS_ENDPOINT
    assert cfg.root == Path("/")
    assert cfg.deadline == DEFAULT_DEADLINE
    assert cfg.output == DEFAULT_OUTPUT
    assert cfg.handoff == "file"


def test_environment_beats_defaults() -> None:
    env = {
        "SEALBOOT_REGION": "us-east-2",
        "SEALBOOT_ENDPOINT_URL": "http://127.0.0.1:5000",
        "SEALBOOT_IMDS_ENDPOINT": "http://127.0.0.1:1338",
        "SEALBOOT_ROOT": "/srv/inst",
        "SEALBOOT_DEADLINE": "42",
    }
    cfg = build_config(build_parser().parse_args(["fetch", "--manifest", MJSON]), env)
    assert cfg.region == "us-east-2"
    assert cfg.target.region == "us-east-2"
    assert cfg.endpoint_url == "http://127.0.0.1:5000"
    assert cfg.target.endpoint_url == "http://127.0.0.1:5000"
    assert cfg.imds_endpoint == "http://127.0.0.1:1338"
    assert cfg.root == Path("/srv/inst")
    assert cfg.deadline == 42.0
    assert cfg.path("/etc/x") == Path("/srv/inst/etc/x")


def test_command_line_beats_environment() -> None:
    env = {
        "SEALBOOT_REGION": "us-east-2",
        "SEALBOOT_ENDPOINT_URL": "http://127.0.0.1:5000",
        "SEALBOOT_IMDS_ENDPOINT": "http://127.0.0.1:1338",
        "SEALBOOT_ROOT": "/srv/inst",
        "SEALBOOT_DEADLINE": "42",
    }
    argv = [
        "fetch",
        "--manifest",
        MJSON,
        "--region",
        "ap-south-1",
        "--endpoint-url",
        "https://vpce.example",
        "--imds-endpoint",
        "http://10.0.0.1",
        "--root",
        "/other",
        "--deadline",
        "7",
    ]
    cfg = build_config(build_parser().parse_args(argv), env)
    assert cfg.region == "ap-south-1"
    assert cfg.endpoint_url == "https://vpce.example"
    assert cfg.imds_endpoint == "http://10.0.0.1"
    assert cfg.root == Path("/other")
    assert cfg.deadline == 7.0


def test_empty_environment_values_count_as_unset() -> None:
    env = {"SEALBOOT_REGION": "", "SEALBOOT_ROOT": "", "SEALBOOT_DEADLINE": ""}
    cfg = build_config(build_parser().parse_args(["fetch", "--manifest", MJSON]), env)
    assert cfg.region is None
    assert cfg.root == Path("/")
    assert cfg.deadline == DEFAULT_DEADLINE


def test_bad_endpoint_from_environment_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="endpoint URL"):
        build_config(
            build_parser().parse_args(["fetch", "--manifest", MJSON]),
            {"SEALBOOT_ENDPOINT_URL": "not a url"},
        )


def test_prefix_and_count_build_a_capa_manifest_with_cli_region() -> None:
    args = build_parser().parse_args(
        ["fetch", "--prefix", "aws.cluster.x-k8s.io/u", "--count", "3", "--region", "eu-north-1"]
    )
    cfg = build_config(args, {})
    assert cfg.manifest.format == "capa"
    assert cfg.manifest.fragments == tuple(f"aws.cluster.x-k8s.io/u-{i}" for i in range(3))
    assert cfg.manifest.region == "eu-north-1"


def test_manifest_is_read_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    path.write_text(MJSON)
    cfg = build_config(build_parser().parse_args(["fetch", "--manifest", str(path)]), {})
    assert cfg.manifest == MANIFEST


def test_handoff_none_defaults_to_the_private_output() -> None:
    args = build_parser().parse_args(["fetch", "--manifest", MJSON, "--handoff", "none"])
    cfg = build_config(args, {})
    assert cfg.output.startswith("/var/lib/sealboot/")


def test_log_file_dash_means_none() -> None:
    args = build_parser().parse_args(["fetch", "--manifest", MJSON, "--log-file", "-"])
    assert build_config(args, {}).log_file is None


# --- logging -------------------------------------------------------------------------------


def emit(text: str) -> None:
    logging.getLogger("sealboot_agent").info("%s", text)
    for handler in logging.getLogger("sealboot_agent").handlers:
        handler.flush()


def test_log_line_written_once_when_stderr_is_the_log_file(tmp_path: Path) -> None:
    log_file = tmp_path / "var" / "log" / "cloud-init-output.log"
    log_file.parent.mkdir(parents=True)
    with open(log_file, "a", encoding="utf-8") as stderr:
        configure_logging(0, log_file, stderr)
        emit("only-once-marker")
        stderr.flush()
    lines = [line for line in log_file.read_text().splitlines() if "only-once-marker" in line]
    assert len(lines) == 1
    assert "sealboot-agent[" in lines[0]
    assert "INFO" in lines[0]


def test_log_line_written_once_when_stderr_is_the_log_file_through_a_symlink(
    tmp_path: Path,
) -> None:
    real = tmp_path / "real.log"
    link = tmp_path / "link.log"
    real.touch()
    link.symlink_to(real)
    with open(real, "a", encoding="utf-8") as stderr:
        configure_logging(0, link, stderr)
        emit("symlink-marker")
        stderr.flush()
    assert real.read_text().count("symlink-marker") == 1


def test_log_line_written_to_each_when_different(tmp_path: Path) -> None:
    log_file = tmp_path / "log" / "agent.log"
    stderr = io.StringIO()
    configure_logging(0, log_file, stderr)
    emit("twice-marker")
    assert stderr.getvalue().count("twice-marker") == 1
    assert log_file.read_text().count("twice-marker") == 1
    assert stat.S_IMODE(log_file.stat().st_mode) == 0o600


def test_log_to_a_different_real_file_as_stderr(tmp_path: Path) -> None:
    log_file = tmp_path / "agent.log"
    other = tmp_path / "console.log"
    with open(other, "a", encoding="utf-8") as stderr:
        configure_logging(0, log_file, stderr)
        emit("split-marker")
        stderr.flush()
    assert other.read_text().count("split-marker") == 1
    assert log_file.read_text().count("split-marker") == 1


def test_configure_logging_twice_does_not_duplicate(tmp_path: Path) -> None:
    stderr = io.StringIO()
    configure_logging(0, None, stderr)
    configure_logging(0, None, stderr)
    emit("dup-marker")
    assert stderr.getvalue().count("dup-marker") == 1


def test_unwritable_log_file_falls_back_to_stderr(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    stderr = io.StringIO()
    configure_logging(0, blocker / "sub" / "agent.log", stderr)
    emit("fallback-marker")
    text = stderr.getvalue()
    assert "cannot append" in text
    assert text.count("fallback-marker") == 1


def test_verbose_enables_debug() -> None:
    stderr = io.StringIO()
    configure_logging(0, None, stderr)
    logging.getLogger("sealboot_agent").debug("quiet-marker")
    assert "quiet-marker" not in stderr.getvalue()
    configure_logging(1, None, stderr)
    logging.getLogger("sealboot_agent").debug("loud-marker")
    assert "loud-marker" in stderr.getvalue()


# --- status --------------------------------------------------------------------------------


def store_under(root: Path) -> StateStore:
    return StateStore(root / "var" / "lib" / "sealboot")


def test_status_on_an_empty_root_says_never_run(tmp_path: Path) -> None:
    code, out, _ = run(["status", "--root", str(tmp_path)])
    assert code == 0
    assert "not run" in out


def test_status_json_on_an_empty_root(tmp_path: Path) -> None:
    code, out, _ = run(["status", "--json", "--root", str(tmp_path)])
    assert code == 0
    assert json.loads(out) == {"phase": None, "outcome": "never-run"}


def test_status_root_from_the_environment(tmp_path: Path) -> None:
    state = State(manifest_id="f" * 32, phase="done", outcome="ok")
    store_under(tmp_path).save(state)
    code, out, _ = run(["status", "--json"], {"SEALBOOT_ROOT": str(tmp_path)})
    assert code == 0
    assert json.loads(out)["manifest_id"] == "f" * 32


def test_status_json_prints_the_saved_state(tmp_path: Path) -> None:
    state = State(
        manifest_id="a" * 32,
        phase="done",
        outcome="ok",
        fragments=["aws.cluster.x-k8s.io/u-0"],
        instance_id="i-0abc",
        region="eu-west-1",
        output="/etc/secret-userdata.txt",
        handoff="file",
    )
    store_under(tmp_path).save(state, phase="done")
    code, out, _ = run(["status", "--json", "--root", str(tmp_path)])
    assert code == 0
    assert State.from_json(out) == state
    data = json.loads(out)
    assert data["outcome"] == "ok"
    assert data["instance_id"] == "i-0abc"


def test_status_of_a_failed_run_exits_non_zero_and_shows_the_error(tmp_path: Path) -> None:
    when = 1_700_000_000.0
    state = State(
        manifest_id="b" * 32,
        phase="written",
        outcome="failed",
        fragments=["aws.cluster.x-k8s.io/u-0", "aws.cluster.x-k8s.io/u-1"],
        left_behind=["aws.cluster.x-k8s.io/u-1"],
        times={"written": when},
        error={"message": "delete denied", "exit_code": 9},
    )
    store_under(tmp_path).save(state)
    code, out, _ = run(["status", "--root", str(tmp_path)])
    assert code == 1
    assert "failed" in out
    assert "b" * 32 in out
    assert "delete denied" in out
    assert "exit 9" in out
    (left_line,) = [line for line in out.splitlines() if "left behind" in line]
    assert "u-1" in left_line
    stamp = datetime.datetime.fromtimestamp(when, tz=datetime.timezone.utc)
    assert stamp.strftime("%Y-%m-%dT%H:%M:%S") in out
    code, out, _ = run(["status", "--json", "--root", str(tmp_path)])
    assert code == 1


def test_status_on_a_corrupt_state_file_exits_10(tmp_path: Path) -> None:
    store = store_under(tmp_path)
    store.directory.mkdir(parents=True)
    store.file.write_text("{garbage")
    code, _, err = run(["status", "--root", str(tmp_path)])
    assert code == 10
    assert "corrupt" in err


@pytest.mark.parametrize("source", ["--manifest", "--prefix"])
def test_bad_region_on_the_command_line_is_a_usage_error(source: str) -> None:
    what = MJSON if source == "--manifest" else "aws.cluster.x-k8s.io/u"
    argv = ["fetch", source, what, "--region", "eu west 1"]
    if source == "--prefix":
        argv += ["--count", "1"]
    with pytest.raises(UsageError, match="region"):
        build_config(build_parser().parse_args(argv), {})


def test_the_program_runs_without_the_cyclic_gc_but_main_leaves_it_alone() -> None:
    probe = (
        "import gc, sys\n"
        "from sealboot_agent import cli\n"
        "cli.main(['--version'])\n"
        "print('after main', gc.isenabled())\n"
        "sys.argv = ['sealboot-agent', '--version']\n"
        "try:\n"
        "    cli.entrypoint()\n"
        "except SystemExit as exc:\n"
        "    print('after entrypoint', gc.isenabled(), exc.code)\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )

    assert "after main True" in res.stdout
    assert "after entrypoint False 0" in res.stdout


# --- hostile input: documented exit codes, bounded reads, a root that leads elsewhere --------

# Nothing listens here: a run that got past its checks would fail at IMDS (exit 3), quickly.
# Given first, so that a test's own --deadline or --log-file wins.
OFFLINE = ["--imds-endpoint", "http://127.0.0.1:9", "--deadline", "1", "--log-file", "-"]


def fetch(root: Path, *argv: str) -> tuple[int, str, str]:
    return run(["fetch", *OFFLINE, *argv, "--root", str(root)])


@pytest.mark.parametrize("digit", ["\u0661", "\u0967", "\uff11"])
@pytest.mark.parametrize("source", ["--manifest", "--prefix"])
def test_region_with_non_ascii_digits_exits_2(digit: str, source: str, tmp_path: Path) -> None:
    what = MJSON if source == "--manifest" else "aws.cluster.x-k8s.io/u"
    argv = [source, what, "--region", f"eu-west-{digit}"]
    if source == "--prefix":
        argv += ["--count", "1"]
    code, _, err = fetch(tmp_path, *argv)
    assert code == 2
    assert "not an AWS region name" in err
    assert not (tmp_path / "var").exists()


@pytest.mark.parametrize("flag", ["--endpoint-url", "--imds-endpoint"])
@pytest.mark.parametrize("url", ["http://[::1", "http://host:99999"])
def test_endpoint_urllib_cannot_parse_exits_2(flag: str, url: str, tmp_path: Path) -> None:
    offline = [] if flag == "--imds-endpoint" else ["--imds-endpoint", "http://127.0.0.1:9"]
    argv = ["fetch", "--manifest", MJSON, flag, url, *offline, "--deadline", "1"]
    code, _, err = run([*argv, "--log-file", "-", "--root", str(tmp_path)])
    assert code == 2
    assert "endpoint URL" in err


def test_manifest_endpoint_urllib_cannot_parse_exits_2(tmp_path: Path) -> None:
    data = json.loads(MJSON)
    data["endpoint_url"] = "http://[::1"
    code, _, err = fetch(tmp_path, "--manifest", json.dumps(data))
    assert code == 2
    assert "bad manifest" in err


@pytest.mark.parametrize("inline", [True, False])
def test_deeply_nested_manifest_exits_2(inline: bool, tmp_path: Path) -> None:
    text = '{"v":' + "[" * 100_000
    source = text
    if not inline:
        source = str(tmp_path / "deep.json")
        Path(source).write_text(text)
    code, _, err = fetch(tmp_path, "--manifest", source)
    assert code == 2
    assert "nested too deeply" in err


def test_manifest_file_over_the_cap_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    path.write_text(MJSON[:-1] + " " * MANIFEST_MAX_BYTES + "}")  # valid JSON, too large
    code, _, err = fetch(tmp_path, "--manifest", str(path))
    assert code == 2
    assert f"over {MANIFEST_MAX_BYTES} bytes" in err


def test_manifest_file_that_is_not_utf8_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_bytes(b"\xff" + MJSON.encode())
    code, _, err = fetch(tmp_path, "--manifest", str(path))
    assert code == 2
    assert "UTF-8" in err


def _limited(argv: list[str], limit: int) -> subprocess.CompletedProcess[str]:
    """main(argv) in a child whose address space is capped at *limit* bytes."""
    probe = (
        "import resource, sys\n"
        f"resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))\n"
        "from sealboot_agent.cli import main\n"
        f"sys.exit(main({argv!r}, {{}}))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )


def test_manifest_from_dev_zero_is_read_only_up_to_the_cap(tmp_path: Path) -> None:
    res = _limited(["fetch", "--manifest", "/dev/zero", "--root", str(tmp_path)], 400 << 20)
    assert res.returncode == 2, res.stderr
    assert "over 1048576 bytes" in res.stderr


def test_huge_count_is_refused_before_the_names_are_built(tmp_path: Path) -> None:
    # 5,000,000 names took 672 MiB before they were counted.
    argv = ["fetch", "--prefix", "aws.cluster.x-k8s.io/u", "--count", "5000000"]
    res = _limited([*argv, "--root", str(tmp_path)], 400 << 20)
    assert res.returncode == 2, res.stderr
    assert "over the limit of 1024" in res.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["--prefix", "aws.cluster.x-k8s.io/u", "--count", "\u0661"],
        ["--prefix", "aws.cluster.x-k8s.io/u", "--count", "1_0"],
        ["--manifest", MJSON, "--max-size", "\u0661\u0660"],
        ["--manifest", MJSON, "--denied-grace", "nan"],
        ["--manifest", MJSON, "--deadline", "\u0661\u0660"],
    ],
)
def test_numbers_must_be_ascii_digits(argv: list[str], tmp_path: Path) -> None:
    code, _, err = run(["fetch", *OFFLINE, *argv, "--root", str(tmp_path)])
    assert code == 2
    assert "number" in err


@pytest.mark.parametrize("flag", ["--output", "--log-file"])
def test_paths_with_dot_dot_are_refused(flag: str, tmp_path: Path) -> None:
    code, _, err = run(
        ["fetch", *OFFLINE, "--manifest", MJSON, flag, "/../../tmp/x", "--root", str(tmp_path)]
    )
    assert code == 2
    assert "'..'" in err


def test_relative_log_file_is_still_taken_under_the_root() -> None:
    args = build_parser().parse_args(["fetch", "--manifest", MJSON, "--log-file", "agent.log"])
    assert build_config(args, {}).log_file == "/agent.log"


def other_machines_fragment() -> str:
    data = json.loads(MJSON)
    data["fragments"].append("aws.cluster.x-k8s.io/ns/c1/other-machine/tok-1")
    return json.dumps(data)


def test_manifest_naming_another_machines_fragment_exits_2_before_any_call(
    tmp_path: Path,
) -> None:
    code, _, err = fetch(tmp_path, "--manifest", other_machines_fragment())
    assert code == 2
    assert "other-machine" in err
    assert "bad manifest" in err
    assert not (tmp_path / "var").exists()  # refused before the lock, the state or any call


def test_native_manifest_without_labels_exits_2(tmp_path: Path) -> None:
    data = json.loads(MJSON)
    del data["labels"]
    code, _, err = fetch(tmp_path, "--manifest", json.dumps(data))
    assert code == 2
    assert "label" in err


def test_doctor_checks_the_manifest_scope_and_urls_too() -> None:
    code, _, err = run(["doctor", "--manifest", other_machines_fragment()])
    assert code == 2
    assert "other-machine" in err
    code, _, err = run(["doctor", "--imds-endpoint", "http://[::1"])
    assert code == 2
    assert "endpoint URL" in err


def write_state(root: Path, **fields: object) -> None:
    state = json.loads(State(manifest_id=MANIFEST.manifest_id, phase="done").to_json())
    state.update(fields)
    directory = root / "var" / "lib" / "sealboot"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "state.json").write_text(json.dumps(state))


@pytest.mark.parametrize(
    "fields",
    [{"times": []}, {"fragments": {"a": 1}}, {"phase": 7}, {"times": {"done": 1e300}}],
)
def test_state_file_with_wrong_types_exits_10(fields: dict[str, object], tmp_path: Path) -> None:
    write_state(tmp_path, **fields)
    code, _, err = fetch(tmp_path, "--manifest", MJSON)
    assert code == 10
    assert "corrupt" in err
    code, _, err = run(["status", "--root", str(tmp_path)])
    assert code == 10
    assert "corrupt" in err


def test_lock_path_that_is_a_directory_exits_10(tmp_path: Path) -> None:
    (tmp_path / "var" / "lib" / "sealboot" / "lock").mkdir(parents=True)
    code, _, err = fetch(tmp_path, "--manifest", MJSON)
    assert code == 10
    assert "lock" in err


def test_status_escapes_what_the_state_file_says(tmp_path: Path) -> None:
    write_state(
        tmp_path,
        outcome="failed\x1b[2J",
        region="eu\nFAKE: line",
        error={"message": "boom\x1b]0;title\x07", "exit_code": "9\r"},
    )
    code, out, _ = run(["status", "--root", str(tmp_path)])
    assert code == 1
    assert "\x1b" not in out
    assert "\r" not in out
    assert "\\x1b[2J" in out
    assert "FAKE: line" in out
    assert not any(line.startswith("FAKE") for line in out.splitlines())


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    path = tmp_path / "outside"
    path.mkdir()
    return path


def test_symlinked_state_directory_under_the_root_exits_8_and_writes_nothing_outside(
    tmp_path: Path, outside: Path
) -> None:
    root = tmp_path / "root"
    (root / "var" / "lib").mkdir(parents=True)
    (root / "var" / "lib" / "sealboot").symlink_to(outside)
    code, _, err = fetch(root, "--manifest", MJSON)
    assert code == 8
    assert "symbolic link" in err
    assert f"{root}/var/lib/sealboot" in err
    assert list(outside.iterdir()) == []


def test_symlinked_log_directory_is_not_followed(tmp_path: Path, outside: Path) -> None:
    root = tmp_path / "root"
    (root / "var").mkdir(parents=True)
    (root / "var" / "log").symlink_to(outside)
    stderr = io.StringIO()
    configure_logging(0, root / "var/log/cloud-init-output.log", stderr, root=root)
    emit("confined-marker")
    assert "logging to stderr only" in stderr.getvalue()
    assert "symbolic link" in stderr.getvalue()
    assert stderr.getvalue().count("confined-marker") == 1
    assert list(outside.iterdir()) == []


def test_log_file_that_is_a_symlink_is_not_followed(tmp_path: Path, outside: Path) -> None:
    (tmp_path / "var" / "log").mkdir(parents=True)
    victim = outside / "victim"
    victim.write_text("keep\n")
    (tmp_path / "var" / "log" / "cloud-init-output.log").symlink_to(victim)
    stderr = io.StringIO()
    configure_logging(0, tmp_path / "var/log/cloud-init-output.log", stderr, root=tmp_path)
    emit("not-in-the-victim")
    assert victim.read_text() == "keep\n"
    assert "logging to stderr only" in stderr.getvalue()


def test_a_log_record_is_one_line_whatever_its_message_holds() -> None:
    import io
    import logging

    from sealboot_agent.logs import configure_logging

    err = io.StringIO()
    configure_logging(0, None, err)
    logging.getLogger("sealboot_agent.test").warning(
        "x %s", "a\n2026-01-01T00:00:00Z forged\x1b[2J"
    )
    out = err.getvalue()
    assert out.count("\n") == 1
    assert "\x1b" not in out
    assert "\\n2026" in out


# --- -v before or after the command, manifest paths, status after a failure -----------------


@pytest.mark.parametrize("before", [True, False], ids=["before", "after"])
def test_verbose_is_taken_before_and_after_the_command(before: bool, tmp_path: Path) -> None:
    def argv(command: str, *rest: str) -> list[str]:
        return ["-v", command, *rest] if before else [command, "-v", *rest]

    parser = build_parser()
    for command in (["fetch", "--manifest", MJSON], ["status"], ["doctor"]):
        assert parser.parse_args(argv(*command)).verbose == 1
        assert parser.parse_args(command).verbose == 0

    code, _, err = run(argv("fetch", *OFFLINE, "--manifest", MJSON, "--root", str(tmp_path)))
    assert code == 3
    assert " DEBUG: IMDS token attempt 1 failed" in err

    store_under(tmp_path).save(State(manifest_id="c" * 32, phase="done", outcome="ok"), "done")
    code, out, _ = run(argv("status", "--root", str(tmp_path)))
    assert code == 0
    assert "state file: " in out
    assert "  done        " in out
    assert "+0.000s" in out


def test_mistyped_manifest_path_says_so_not_re_render(tmp_path: Path) -> None:
    code, out, err = run(["fetch", "--manifest", "nope.json"])
    assert code == 2
    assert out == ""
    assert "no such file: nope.json (and it is not JSON either)" in err
    assert "check the path" in err
    assert "re-render" not in err
    code, _, err = run(["doctor", "--manifest", "nope.json"])
    assert code == 2
    assert "no such file: nope.json" in err
    assert "what to do: check the path" in err


def test_manifest_errors_give_advice_that_fits(tmp_path: Path) -> None:
    code, _, err = run(["fetch", "--manifest", str(tmp_path)])  # a directory
    assert code == 2
    assert "cannot read manifest" in err
    assert "check the path" in err
    code, _, err = fetch(tmp_path, "--prefix", "bad name", "--count", "1")
    assert code == 2
    assert "check --prefix, --count and --backend" in err
    code, _, err = fetch(tmp_path, "--manifest", other_machines_fragment())
    assert code == 2
    assert "re-seal with 'sealboot seal'" in err
    code, _, err = fetch(tmp_path, "--manifest", '{"v": 99}')
    assert code == 2
    assert "re-render" in err  # a manifest this agent cannot read: that advice fits
    code, _, err = fetch(tmp_path, "--manifest", "[1, 2]")
    assert code == 2
    assert "must be a JSON object" in err  # JSON, though not a manifest: not "no such file"


def test_status_after_a_failure_names_the_error_and_the_last_step_that_finished(
    tmp_path: Path,
) -> None:
    state = State(
        manifest_id="d" * 32,
        phase="credentials",
        outcome="failed",
        times={"started": 1_700_000_000.0, "credentials": 1_700_000_000.5},
        error={
            "exit_code": 5,
            "kind": "AccessDenied",
            "message": "access to fragment x-0 denied\x1b[2J",
            "fragment": "x-0",
        },
    )
    store_under(tmp_path).save(state)

    code, out, _ = run(["status", "--root", str(tmp_path)])

    assert code == 1
    lines = out.splitlines()
    assert lines[0] == "outcome:   failed"
    assert lines[1] == "error:     AccessDenied (exit 5): access to fragment x-0 denied\\x1b[2J"
    assert "fragment:  x-0" in lines
    assert "last completed step: credentials" in lines
    assert not any(line.startswith("phase:") for line in lines)
    assert lines[-1].startswith("what to do: ")


def test_status_of_an_interrupted_run_says_rerun(tmp_path: Path) -> None:
    store_under(tmp_path).save(State(manifest_id="e" * 32), "started")
    code, out, _ = run(["status", "--root", str(tmp_path)])
    assert code == 1
    assert out.startswith("outcome:   running, or stopped before it finished")
    assert "last completed step: started" in out
    assert "run 'sealboot-agent fetch' again" in out
