"""Command line of sealboot-agent: ``fetch`` and ``status``.

Example::

    $ sealboot-agent fetch --manifest /run/sealboot/manifest.json
    $ sealboot-agent status --json
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TextIO

from sealboot_agent import __version__
from sealboot_agent.config import (
    DEFAULT_DENIED_GRACE,
    DEFAULT_IMDS_ENDPOINT,
    DEFAULT_LOG_FILE,
    DEFAULT_MAX_SIZE,
    DEFAULT_STATE_DIR,
    AgentConfig,
    checked_inside,
    parse_deadline,
    parse_seconds,
    pick,
)
from sealboot_agent.errors import (
    EXIT_CODES,
    AgentError,
    ManifestError,
    UsageError,
    WriteError,
    shown,
)
from sealboot_agent.handoff import HANDOFFS
from sealboot_agent.state import confined_to, open_under
from sealboot_agent.wire import (
    BACKEND_SECRETS_MANAGER,
    BACKENDS,
    MANIFEST_MAX_BYTES,
    REGION_RE,
    Manifest,
    WireError,
    check_endpoint_url,
)

log = logging.getLogger("sealboot_agent")


class _UtcFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(
            fmt="%(asctime)s sealboot-agent[%(process)d] %(levelname)s: %(message)s",
            datefmt="%Y-%m-%dT%H:%M:%SZ",
        )
        self.converter = time.gmtime

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        # One record, one line: whatever slipped into a message cannot forge another line or
        # drive the terminal (tracebacks, appended after this, keep their lines).
        record.message = shown(record.message, limit=1 << 16)
        return super().formatMessage(record)


def _same_file(stream: TextIO, path: Path) -> bool:
    try:
        a = os.fstat(stream.fileno())
        b = os.stat(path)
    except (OSError, ValueError, AttributeError):
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


class _AppendHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A handler over a log file the agent opened itself (under --root, no symlink followed)."""

    def close(self) -> None:
        try:
            self.acquire()
            try:
                self.stream.close()
            finally:
                self.release()
        finally:
            super().close()


def configure_logging(
    verbose: int, log_file: Path | None, stderr: TextIO, *, root: Path | None = None
) -> None:
    """Log to stderr and to *log_file*, but only once when stderr already is that file.

    *log_file* is opened under *root* (default ``/``) without following a symlink out of it;
    when it cannot be, the agent logs to stderr only and says why (a log is not worth a boot).
    """
    logger = logging.getLogger("sealboot_agent")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
    fmt = _UtcFormatter()
    console = logging.StreamHandler(stderr)
    console.setFormatter(fmt)
    logger.addHandler(console)
    if log_file is not None and not _same_file(stderr, log_file):
        old = os.umask(0o077)
        try:
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK
            fd = open_under(log_file, flags, 0o600, root=root)
            handler = _AppendHandler(os.fdopen(fd, "a", encoding="utf-8"))
        except WriteError as exc:
            log.warning("%s; logging to stderr only", exc.message)
        except OSError as exc:
            log.warning(
                "cannot append to %s (%s); logging to stderr only",
                shown(log_file, limit=4096),
                exc.strerror,
            )
        else:
            handler.setFormatter(fmt)
            logger.addHandler(handler)
        finally:
            os.umask(old)
    # botocore's own debug output can echo response bodies (secret values); keep it quiet.
    logging.getLogger("botocore").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)


def _exit_code_table() -> str:
    return "exit codes:\n" + "\n".join(f"  {code:>3}  {what}" for code, what in EXIT_CODES.items())


def _ascii_int(text: str) -> int:
    """An integer in ASCII digits (int() also takes Arabic-Indic digits and "_")."""
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"'{shown(text)}' is not a number")
    return int(text)


def _seconds(text: str) -> float:
    try:
        return parse_seconds(text, "value")
    except UsageError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def _add_source_args(parser: argparse.ArgumentParser, *, required: bool) -> None:
    """Where the fragments are: a manifest or a CAPA prefix, plus region and endpoints."""
    src = parser.add_mutually_exclusive_group(required=required)
    src.add_argument(
        "--manifest",
        metavar="JSON|FILE",
        help="the manifest, inline JSON or a file holding it (at most 1 MiB)",
    )
    src.add_argument("--prefix", help="CAPA-format secrets: the name prefix (with --count)")
    parser.add_argument("--count", type=_ascii_int, help="CAPA-format secrets: how many fragments")
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=BACKEND_SECRETS_MANAGER,
        help="with --prefix: where CAPA wrote the fragments (default: secrets-manager)",
    )
    parser.add_argument(
        "--use-fips",
        action="store_true",
        help="use the FIPS endpoints (also set by 'sealboot seal --use-fips' in the manifest)",
    )
    parser.add_argument(
        "--region", help="AWS region (default: manifest, then IMDS) [env SEALBOOT_REGION]"
    )
    parser.add_argument(
        "--endpoint-url",
        help="Secrets Manager endpoint (VPC endpoint, test stack) [env SEALBOOT_ENDPOINT_URL]",
    )
    parser.add_argument(
        "--imds-endpoint",
        help="instance metadata base URL (default "
        "http://169.254.169.254) [env SEALBOOT_IMDS_ENDPOINT]",
    )


def _verbose_flag(default: object) -> argparse.ArgumentParser:
    """``-v``/``--verbose`` as a parent parser, so it is taken before and after the command."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=default,
        help="more detail: timings, AWS request ids, IMDS request count (never secret bytes); "
        "before or after the command",
    )
    return parent


def build_parser() -> argparse.ArgumentParser:
    # The subcommands' copy of -v defaults to SUPPRESS: a default there would overwrite a -v
    # given before the command (argparse copies every subcommand value over the top level's).
    verbose = _verbose_flag(argparse.SUPPRESS)
    parser = argparse.ArgumentParser(
        prog="sealboot-agent",
        description="Fetch sealed EC2 user data with the instance profile, verify it, write it "
        "durably, delete the fragments and hand the user data on.",
        epilog=_exit_code_table(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_verbose_flag(0)],
    )
    parser.add_argument("--version", action="version", version=f"sealboot-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    fetch = sub.add_parser(
        "fetch",
        help="fetch, verify, write and delete the sealed user data",
        epilog=_exit_code_table(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[verbose],
    )
    _add_source_args(fetch, required=True)
    fetch.add_argument(
        "--root",
        help="filesystem root all paths are under (default /); below a root other than /, "
        "no symlink is followed (exit 8) [env SEALBOOT_ROOT]",
    )
    fetch.add_argument(
        "--output",
        help="where the user data is written (default: "
        "/etc/secret-userdata.txt for --handoff file, /var/lib/sealboot/userdata "
        "for none)",
    )
    fetch.add_argument(
        "--handoff",
        choices=HANDOFFS,
        default="file",
        help="how the user data is handed on (default: file)",
    )
    fetch.add_argument(
        "--max-size",
        type=_ascii_int,
        default=DEFAULT_MAX_SIZE,
        help="refuse user data larger than this once decompressed (default: %(default)s bytes)",
    )
    fetch.add_argument(
        "--deadline",
        help="give up after this many seconds in all (default 300) [env SEALBOOT_DEADLINE]",
    )
    fetch.add_argument(
        "--instance-id",
        help="cloud-init's instance id, for --handoff cloud-init (default: $INSTANCE_ID, "
        "which cloud-init gives boothooks, then /var/lib/cloud/instance)",
    )
    fetch.add_argument(
        "--keep-plaintext",
        action="store_true",
        help="--handoff cloud-init: keep the placed parts and the private copy after the final "
        "stage (default: a last user script removes them)",
    )
    fetch.add_argument(
        "--denied-grace",
        type=_seconds,
        default=DEFAULT_DENIED_GRACE,
        metavar="SECONDS",
        help="retry AccessDenied until this long after boot, while IAM propagates a new "
        "instance profile (default: %(default)s)",
    )
    fetch.add_argument(
        "--require-delete",
        action="store_true",
        help="fail (exit 9) when the fragments cannot be deleted",
    )
    fetch.add_argument(
        "--log-file",
        default=DEFAULT_LOG_FILE,
        help="also append log lines here, under --root; '-' for none (default: %(default)s)",
    )

    doctor = sub.add_parser(
        "doctor",
        help="check IMDSv2, credentials, region, endpoint, fragments and cloud-init "
        "without reading any secret value; exit 1 if a check fails",
        parents=[verbose],
    )
    _add_source_args(doctor, required=False)

    status = sub.add_parser("status", help="show what happened on this instance", parents=[verbose])
    status.add_argument("--root", help="filesystem root (default /) [env SEALBOOT_ROOT]")
    status.add_argument("--json", action="store_true", help="print the state as JSON")
    return parser


def _load_manifest(args: argparse.Namespace, region: str | None, endpoint: str | None) -> Manifest:
    if args.prefix is not None:
        if args.count is None:
            raise UsageError("--prefix needs --count")
        try:
            return Manifest.capa(
                args.prefix, args.count, region=region, endpoint_url=endpoint, backend=args.backend
            )
        except WireError as exc:
            raise ManifestError(
                f"bad manifest: {exc}",
                hint="check --prefix, --count and --backend against the names the CAPA "
                "controller wrote",
            ) from exc
    if args.count is not None:
        raise UsageError("--count goes with --prefix")
    if args.manifest is None:
        raise UsageError("give --manifest JSON|FILE or --prefix P --count N")
    text: str = args.manifest
    if not text.lstrip().startswith("{"):
        text = _read_manifest_file(text)
    try:
        manifest = Manifest.from_json(text)
    except WireError as exc:
        raise ManifestError(f"bad manifest: {exc}") from exc
    try:
        manifest.check_scope()
    except WireError as exc:
        # Seal never writes such a manifest, and re-rendering this one would keep the fault.
        raise ManifestError(
            f"bad manifest: {exc}",
            hint="re-seal with 'sealboot seal', whose manifests always name their own "
            "machine's fragments; if this one was edited, check who can change the user data",
        ) from exc
    return manifest


_CHECK_PATH = (
    "check the path: --manifest takes a manifest file or the manifest's JSON itself "
    "(starting with '{')"
)


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return False
    return True


def _read_manifest_file(name: str) -> str:
    """The manifest file's text; at most MANIFEST_MAX_BYTES are read (it may be /dev/zero)."""
    try:
        with open(name, "rb") as fh:
            raw = fh.read(MANIFEST_MAX_BYTES + 1)
    except FileNotFoundError as exc:
        if name and _is_json(name):
            return name  # JSON, just not an object: the parser says what is wrong with it
        # A mistyped path, not a bad rendering: re-rendering would not help.
        raise ManifestError(
            f"no such file: {shown(name)} (and it is not JSON either)", hint=_CHECK_PATH
        ) from exc
    except OSError as exc:
        raise ManifestError(
            f"cannot read manifest {shown(name)}: {exc.strerror}",
            hint=f"{_CHECK_PATH}; the file must be readable by this user",
        ) from exc
    if len(raw) > MANIFEST_MAX_BYTES:
        raise ManifestError(
            f"manifest {shown(name)} is over {MANIFEST_MAX_BYTES} bytes; a real one is a few "
            "hundred",
            hint=_CHECK_PATH,
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"manifest {shown(name)} is not UTF-8 text", hint=_CHECK_PATH) from exc


def _sources(
    args: argparse.Namespace, env: Mapping[str, str]
) -> tuple[str | None, str | None, str]:
    """Region, fragment-store endpoint and IMDS endpoint, checked; UsageError if one is bad."""
    region = pick(args.region, env, "region")
    if region is not None and not REGION_RE.match(region):
        raise UsageError(f"region '{shown(region)}' is not an AWS region name (like eu-west-1)")
    endpoint = pick(args.endpoint_url, env, "endpoint_url")
    imds = pick(args.imds_endpoint, env, "imds_endpoint") or DEFAULT_IMDS_ENDPOINT
    for url in (endpoint, imds):
        if url is not None:
            try:
                check_endpoint_url(url)
            except WireError as exc:
                raise UsageError(shown(exc)) from exc
    return region, endpoint, imds


def build_config(args: argparse.Namespace, env: Mapping[str, str]) -> AgentConfig:
    """The frozen configuration from the command line, then the environment, then defaults."""
    region, endpoint, imds = _sources(args, env)
    manifest = _load_manifest(args, region, endpoint)
    root = Path(pick(args.root, env, "root") or "/")
    if not root.is_absolute():
        root = root.resolve()
    output = checked_inside("--output", args.output or HANDOFFS[args.handoff].default_output)
    log_file = None
    if args.log_file != "-":
        # Taken under --root like --output; a relative one always was, so it stays accepted.
        log_file = checked_inside("--log-file", "/" + args.log_file.lstrip("/"))
    if args.max_size < 1:
        raise UsageError("--max-size must be positive")
    return AgentConfig(
        manifest=manifest,
        root=root,
        output=output,
        handoff=args.handoff,
        region=region,
        endpoint_url=endpoint,
        imds_endpoint=imds,
        state_dir=DEFAULT_STATE_DIR,
        log_file=log_file,
        max_size=args.max_size,
        deadline=parse_deadline(pick(args.deadline, env, "deadline")),
        require_delete=args.require_delete,
        denied_grace=max(0.0, args.denied_grace),
        cloud_init_instance_id=pick(args.instance_id, env, "instance_id"),
        keep_plaintext=args.keep_plaintext,
        use_fips=args.use_fips or manifest.use_fips,
        verbose=args.verbose,
        pause_at=pick(None, env, "pause_at"),
    )


_OUTCOMES = {
    "ok": "ok",
    "failed": "failed",
    # A killed run leaves "running" behind; the next run resumes after the last step.
    "running": "running, or stopped before it finished (the next run resumes)",
}


def _stamp(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def _status(args: argparse.Namespace, env: Mapping[str, str], out: TextIO) -> int:
    from sealboot_agent.state import PHASES, StateStore

    root = Path(pick(args.root, env, "root") or "/")
    store = StateStore(root / DEFAULT_STATE_DIR.lstrip("/"), root=root)
    state = store.load()
    if state is None:
        if args.json:
            out.write(json.dumps({"phase": None, "outcome": "never-run"}) + "\n")
        else:
            out.write("sealboot-agent has not run on this instance\n")
        return 0
    if args.json:
        out.write(state.to_json())
        return 0 if state.outcome == "ok" else 1
    # The state file is under the root, so its text is shown like any text from outside.
    out.write(f"outcome:   {_OUTCOMES.get(state.outcome) or shown(state.outcome)}\n")
    if state.error:
        err = state.error
        kind = f"{shown(err.get('kind'))} " if err.get("kind") else ""
        out.write(
            f"error:     {kind}(exit {shown(err.get('exit_code'))}): "
            f"{shown(err.get('message'), limit=4096)}\n"
        )
        if err.get("fragment"):
            out.write(f"fragment:  {shown(err.get('fragment'), limit=1024)}\n")
    # The phase saved is the last step that finished, not the one that failed.
    out.write(f"last completed step: {state.phase}\n")
    out.write(f"manifest:  {shown(state.manifest_id)}\n")
    out.write(
        f"instance:  {shown(state.instance_id or '-')}  region: {shown(state.region or '-')}\n"
    )
    out.write(f"output:    {shown(state.output or '-')}  hand-off: {shown(state.handoff or '-')}\n")
    out.write(f"fragments: {len(state.fragments)}\n")
    for name in state.fragments:
        out.write(f"  {shown(name)}{'  (left behind)' if name in state.left_behind else ''}\n")
    out.write("steps completed:\n")
    first = min(state.times.values(), default=0.0)
    for phase in PHASES:
        if phase not in state.times:
            continue
        at = state.times[phase]
        since = f"  +{at - first:.3f}s" if args.verbose else ""
        out.write(f"  {phase:<11} {_stamp(at)}{since}\n")
    if args.verbose:
        out.write(f"state file: {shown(store.file, limit=4096)}\n")
        out.write(f"agent:     {shown(state.agent_version or '-')}\n")
    if state.outcome == "running":
        out.write(
            "what to do: unless a sealboot-agent is running now, run 'sealboot-agent fetch' "
            "again (safe: fragments are deleted only after a verified durable write)\n"
        )
    elif state.outcome != "ok":
        out.write(
            "what to do: the log (/var/log/cloud-init-output.log, or fetch's --log-file) has "
            "the advice next to the error; 'sealboot-agent doctor' checks what a fetch needs\n"
        )
    return 0 if state.outcome == "ok" else 1


def _doctor(args: argparse.Namespace, env: Mapping[str, str], out: TextIO, err: TextIO) -> int:
    from sealboot_agent.doctor import FAIL, DoctorConfig, run_doctor, summary
    from sealboot_agent.run import Deps

    try:
        region, endpoint, imds = _sources(args, env)
        manifest = None
        if args.manifest is not None or args.prefix is not None:
            manifest = _load_manifest(args, region, endpoint)
    except AgentError as exc:
        err.write(f"sealboot-agent: error: {exc.message}\n  what to do: {exc.advice}\n")
        return exc.exit_code
    configure_logging(args.verbose, None, err)
    cfg = DoctorConfig(
        manifest=manifest,
        region=region,
        endpoint_url=endpoint,
        imds_endpoint=imds,
        backend=args.backend,
        use_fips=args.use_fips,
    )
    checks = run_doctor(cfg, Deps())
    for check in checks:
        # Details quote IMDS, AWS, cloud-init and the manifest: all text from outside.
        out.write(f"[{check.verdict:^4}] {check.name}: {shown(check.detail, limit=4096)}\n")
        if check.todo:
            out.write(f"       what to do: {shown(check.todo, limit=4096)}\n")
    out.write(summary(checks) + "\n")
    return 1 if any(c.verdict == FAIL for c in checks) else 0


def main(
    argv: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    stdout: TextIO = sys.stdout,
    stderr: TextIO = sys.stderr,
) -> int:
    """Run the agent; return the process exit code (documented in EXIT_CODES)."""
    env = os.environ if env is None else env
    parser = build_parser()
    try:
        # argparse prints usage, --help and --version itself; send them to our streams.
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        if args.command == "status":
            return _status(args, env, stdout)
        if args.command == "doctor":
            return _doctor(args, env, stdout, stderr)
    except AgentError as exc:
        stderr.write(f"sealboot-agent: error: {exc.message}\n  what to do: {exc.advice}\n")
        return exc.exit_code
    os.umask(0o077)
    try:
        cfg = build_config(args, env)
    except AgentError as exc:
        stderr.write(f"sealboot-agent: error: {exc.message}\n  what to do: {exc.advice}\n")
        return exc.exit_code
    configure_logging(
        cfg.verbose, cfg.path(cfg.log_file) if cfg.log_file else None, stderr, root=cfg.root
    )
    from sealboot_agent.deadline import within_deadline
    from sealboot_agent.run import Deps, run_fetch

    label = cfg.manifest.labels.get("machine")
    log.info(
        "sealboot-agent %s: %d fragment(s)%s, manifest %s",
        __version__,
        cfg.manifest.count,
        f" for machine {label}" if label else "",
        cfg.manifest.manifest_id,
    )
    try:
        # Every file the run writes stays under --root, through no symlink out of it.
        with confined_to(cfg.root):
            # A watchdog ends a network call that outlives --deadline (timeouts are per read).
            state = within_deadline(
                cfg.deadline,
                lambda: run_fetch(cfg, Deps()),
                last_words=lambda err: _report_to_cloud_init(cfg, err),
            )
        if cfg.handoff == "stdout":
            from sealboot_agent.run import handed_over_copy

            data = handed_over_copy(cfg, state)
            buffer = getattr(stdout, "buffer", None)
            if buffer is not None:
                buffer.write(data)
                buffer.flush()
            else:
                stdout.write(data.decode("utf-8", "surrogateescape"))
    except AgentError as exc:
        log.error("%s", exc.message)
        log.error("what to do: %s", exc.advice)
        log.error("exit %d", exc.exit_code)
        _report_to_cloud_init(cfg, exc)
        return exc.exit_code
    except Exception:  # noqa: BLE001 - the boot path must say what broke, not just die
        log.exception("unexpected error; no fragment was deleted unless the log says so")
        return 1
    return 0


def _report_to_cloud_init(cfg: AgentConfig, exc: AgentError) -> None:
    """cloud-init only logs a failing boothook; a failing user script makes status say error."""
    if cfg.handoff != "cloud-init":
        return
    from sealboot_agent.handoff import report_failure
    from sealboot_agent.run import cloud_init_instance_id

    iid = cloud_init_instance_id(cfg)
    if iid is None:
        return
    try:
        with confined_to(cfg.root):
            report_failure(cfg.root, iid, f"{exc.message} (exit {exc.exit_code})")
    except AgentError as err:
        log.warning("could not record the failure for cloud-init: %s", err.message)


def entrypoint() -> None:
    """The ``sealboot-agent`` program: ``main`` with the process's own arguments."""
    # A run is a short-lived process that allocates nearly all it will ever hold while importing
    # botocore and requests. The cyclic collector's passes over that heap find nothing to free
    # and cost ~10 ms of every boot; reference counting still frees everything outside cycles.
    # (Here, not in main(): tests call main() inside a long-lived pytest process.)
    gc.disable()
    from sealboot_agent.deadline import finish

    sys.exit(finish(main()))
