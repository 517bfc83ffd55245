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
    shown,
)
from sealboot_agent.handoff import HANDOFFS
from sealboot_agent.logs import configure_logging
from sealboot_agent.state import confined_to
from sealboot_agent.status import show_status
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
        help="the fragments' store endpoint, Secrets Manager or SSM (VPC endpoint, test stack) "
        "[env SEALBOOT_ENDPOINT_URL]",
    )
    parser.add_argument(
        "--imds-endpoint",
        help=f"instance metadata base URL (default {DEFAULT_IMDS_ENDPOINT}) "
        "[env SEALBOOT_IMDS_ENDPOINT]",
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
        use_fips=args.use_fips,
        verbose=args.verbose,
        pause_at=pick(None, env, "pause_at"),
    )


def _refuse(err: TextIO, exc: AgentError) -> int:
    """Report an error found before logging is set up; return its exit code."""
    err.write(f"sealboot-agent: error: {exc.message}\n  what to do: {exc.advice}\n")
    return exc.exit_code


def _doctor(args: argparse.Namespace, env: Mapping[str, str], out: TextIO, err: TextIO) -> int:
    from sealboot_agent.doctor import DoctorConfig, print_doctor, run_doctor
    from sealboot_agent.run import Deps

    region, endpoint, imds = _sources(args, env)
    manifest = None
    if args.manifest is not None or args.prefix is not None:
        manifest = _load_manifest(args, region, endpoint)
    configure_logging(args.verbose, None, err)
    cfg = DoctorConfig(
        manifest=manifest,
        region=region,
        endpoint_url=endpoint,
        imds_endpoint=imds,
        backend=args.backend,
        use_fips=args.use_fips,
    )
    return print_doctor(run_doctor(cfg, Deps()), out)


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
            root = Path(pick(args.root, env, "root") or "/")
            return show_status(root, stdout, as_json=args.json, verbose=args.verbose)
        if args.command == "doctor":
            return _doctor(args, env, stdout, stderr)
        os.umask(0o077)
        cfg = build_config(args, env)
    except AgentError as exc:
        return _refuse(stderr, exc)
    configure_logging(
        cfg.verbose, cfg.path(cfg.log_file) if cfg.log_file else None, stderr, root=cfg.root
    )
    return _fetch(cfg, stdout)


def _fetch(cfg: AgentConfig, stdout: TextIO) -> int:
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
    handoff = HANDOFFS[cfg.handoff]
    try:
        # Every file the run writes stays under --root, through no symlink out of it.
        with confined_to(cfg.root):
            # A watchdog ends a network call that outlives --deadline (timeouts are per read).
            done = within_deadline(
                cfg.deadline,
                lambda: run_fetch(cfg, Deps()),
                last_words=lambda err: handoff.report_failure(cfg, err),
            )
        handoff.deliver(cfg, done.state, done.payload, stdout)
    except AgentError as exc:
        log.error("%s", exc.message)
        log.error("what to do: %s", exc.advice)
        log.error("exit %d", exc.exit_code)
        handoff.report_failure(cfg, exc)
        return exc.exit_code
    except Exception:  # noqa: BLE001 - the boot path must say what broke, not just die
        log.exception("unexpected error; no fragment was deleted unless the log says so")
        return 1
    return 0


def entrypoint() -> None:
    """The ``sealboot-agent`` program: ``main`` with the process's own arguments."""
    # A run is a short-lived process that allocates nearly all it will ever hold while importing
    # botocore and requests. The cyclic collector's passes over that heap find nothing to free
    # and cost ~10 ms of every boot; reference counting still frees everything outside cycles.
    # (Here, not in main(): tests call main() inside a long-lived pytest process.)
    gc.disable()
    from sealboot_agent.deadline import finish

    sys.exit(finish(main()))
