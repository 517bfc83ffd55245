"""Command line of the sealboot toolkit: seal, render, delete, inspect, policy, sweep.

Example::

    $ sealboot seal --namespace default --cluster c1 --machine m1 --region eu-west-1 \\
          --manifest-out m1.json -o m1.userdata cloud-config.yaml
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import sys
import time
import zlib
from collections.abc import Mapping, Sequence
from typing import TextIO

from sealboot import policy as policy_cmd
from sealboot import sweep_cli, tag_instance
from sealboot.errors import (
    EXIT_CODES,
    NOTHING_CREATED,
    NOTHING_DELETED,
    InputError,
    SealbootError,
    TooLarge,
)
from sealboot.files import check_outputs, read_input, read_manifest, write_all, write_output
from sealboot_agent import __version__
from sealboot_agent.stores import STORES
from sealboot_agent.wire import (
    BACKENDS,
    FORMATS,
    REGION_RE,
    Manifest,
    WireError,
    check_endpoint_url,
)

log = logging.getLogger("sealboot")

# What `inspect` reads: EC2 user data is at most 16 KB, gzipped or not; this leaves room for a
# copy wrapped by other tools, and bounds the read and the gunzip of a file that is not that.
USERDATA_READ_MAX = 1 << 20
# What a command that fails before touching AWS has left there, for its "what to do" line.
UNTOUCHED = {"seal": NOTHING_CREATED, "delete": NOTHING_DELETED}
VERBOSE_HELP = "more detail on stderr: region, endpoint, names, sizes, timings, request ids"


def _epilog() -> str:
    return "exit codes:\n" + "\n".join(f"  {c:>3}  {w}" for c, w in EXIT_CODES.items())


def _common_aws(p: argparse.ArgumentParser) -> None:
    p.add_argument("--region", help="AWS region [env AWS_REGION, AWS_DEFAULT_REGION]")
    p.add_argument(
        "--endpoint-url",
        help="Secrets Manager endpoint (VPC endpoint, test stack) [env SEALBOOT_ENDPOINT_URL]",
    )


def _ascii_int(text: str) -> int:
    """An integer in ASCII digits (int() also takes Arabic-Indic digits and "_")."""
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sealboot",
        description="Seal EC2 user data into short-lived Secrets Manager fragments and render "
        "the boothook that fetches them at first boot.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"sealboot {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True)

    seal = sub.add_parser("seal", help="store user data as fragments; print the EC2 user data")
    seal.add_argument("userdata", metavar="USERDATA_FILE|-", help="the real user data")
    seal.add_argument(
        "--backend",
        choices=BACKENDS,
        default="secrets-manager",
        help="where the fragments go (default: secrets-manager)",
    )
    seal.add_argument(
        "--tier",
        choices=["standard", "advanced"],
        help="--backend ssm only: Standard (4 KB values, free; the default) or Advanced "
        "(8 KB values) parameters",
    )
    seal.add_argument(
        "--use-fips",
        action="store_true",
        help="use FIPS endpoints here, and tell the agent and the fallback to use them too",
    )
    seal.add_argument(
        "--handoff",
        choices=["cloud-init", "capa"],
        default="cloud-init",
        help="how the boothook hands the user data to cloud-init: cloud-init (default) or "
        "capa (CAPA's legacy include + restart; fails on stock cloud-init, see README)",
    )
    seal.add_argument(
        "--insecure-skip-secrets-manager",
        action="store_true",
        help="do not seal: print the user data unchanged as EC2 user data (for bootstraps "
        "that are not cloud-init); anyone who can reach IMDS can read it",
    )
    seal.add_argument("--namespace", required=True, help="Kubernetes namespace of the machine")
    seal.add_argument("--cluster", required=True, help="cluster name")
    seal.add_argument("--machine", required=True, help="machine name")
    seal.add_argument("--role", default="node", help="machine role tag (default: node)")
    _common_aws(seal)
    seal.add_argument(
        "--kms-key-id", help="customer KMS key for the fragments (default: aws/secretsmanager)"
    )
    seal.add_argument(
        "--tag",
        action="append",
        default=[],
        metavar="K=V",
        help="extra tag on every fragment (repeatable)",
    )
    seal.add_argument(
        "--format",
        choices=FORMATS,
        default="native",
        help="native (default) or capa: what a stock CAPA controller writes",
    )
    seal.add_argument(
        "--expires-in",
        type=_ascii_int,
        default=24 * 3600,
        metavar="SECONDS",
        help="expiry tag that 'sweep' honours (default: 86400)",
    )
    seal.add_argument("--manifest-out", metavar="FILE", help="write the manifest JSON here")
    seal.add_argument(
        "-o", "--output", metavar="FILE", help="write the user data here (default: stdout)"
    )

    render = sub.add_parser("render", help="render user data from a manifest")
    render.add_argument(
        "manifest", metavar="MANIFEST", help="manifest JSON file, or - (at most 1 MiB)"
    )
    render.add_argument("-o", "--output", metavar="FILE", help="default: stdout")
    render.add_argument(
        "--handoff", choices=["cloud-init", "capa"], default="cloud-init", help="as for seal"
    )

    delete = sub.add_parser("delete", help="delete a machine's fragments (idempotent)")
    delete.add_argument(
        "manifest", metavar="MANIFEST", help="manifest JSON file, or - (at most 1 MiB)"
    )
    _common_aws(delete)

    policy_cmd.add_parser(sub)
    sweep_cli.add_parser(sub)
    tag_instance.add_parser(sub)

    inspect = sub.add_parser("inspect", help="print the manifest carried by rendered user data")
    inspect.add_argument(
        "userdata", metavar="USERDATA_FILE", help="rendered user data, or - (at most 1 MiB)"
    )
    # -v also after the subcommand ("sealboot seal -v ..."), on every one of them, those other
    # modules build included. Its own dest, absent unless given, so both places add up.
    for command in sub.choices.values():
        command.add_argument(
            "-v",
            "--verbose",
            dest="sub_verbose",
            action="count",
            default=argparse.SUPPRESS,
            help=VERBOSE_HELP,
        )
    return parser


def _aws_target(region: str | None, endpoint: str | None) -> None:
    """Refuse a region or endpoint botocore would choke on, before any client is made."""
    if region is not None and not REGION_RE.match(region):
        raise InputError(f"region {region!r} is not an AWS region name (like eu-west-1)")
    if endpoint is not None:
        try:
            check_endpoint_url(endpoint)
        except WireError as exc:
            raise InputError(str(exc)) from exc


def _gunzip_capped(data: bytes, limit: int) -> bytes:
    """*data* gunzipped when it is gzip, refusing more than *limit* bytes out (a gzip bomb)."""
    if data[:2] != b"\x1f\x8b":
        return data
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflate.decompress(data, limit + 1)
    except zlib.error as exc:
        raise InputError(f"user data looks gzipped but is not: {exc}") from exc
    if len(out) > limit:
        raise InputError(f"user data is over {limit} bytes once gunzipped")
    return out


def _tags(raw: Sequence[str]) -> tuple[tuple[str, str], ...]:
    out = []
    for item in raw:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--tag {item!r} must be KEY=VALUE")
        out.append((key, value))
    return tuple(out)


def _cmd_seal(
    args: argparse.Namespace, env: Mapping[str, str], stdin: TextIO, stdout: TextIO
) -> int:
    from sealboot.render import EC2_USERDATA_MAX, render_userdata
    from sealboot.seal import MAX_USERDATA, SealConfig, seal

    if args.tier is not None and len(STORES[args.backend].tiers) < 2:
        raise InputError(
            f"--tier {args.tier} is for SSM Parameter Store parameters; add --backend ssm, "
            "or drop --tier (Secrets Manager has no tiers)"
        )
    outputs: list[tuple[str | None, str]] = [(args.output, "-o/--output")]
    if args.manifest_out is not None:  # None: no manifest file (-o None: standard output)
        outputs.insert(0, (args.manifest_out, "--manifest-out"))
    check_outputs(outputs)
    data = read_input(args.userdata, stdin, MAX_USERDATA)
    where = "standard input" if args.userdata == "-" else args.userdata
    if not data:
        raise InputError(
            f"{where} is empty: there is no user data to seal",
            hint="give the file that holds the user data, or pipe it in with -",
        )
    log.debug("read %d bytes of user data from %s", len(data), where)
    if args.insecure_skip_secrets_manager:
        log.warning(
            "WARNING: --insecure-skip-secrets-manager: the user data is NOT sealed. It goes into "
            "EC2 user data in the clear, and anything that can reach the instance metadata "
            "service can read it for the instance's whole life"
        )
        if len(data) > EC2_USERDATA_MAX:
            raise TooLarge(
                f"user data is {len(data)} bytes; EC2 accepts at most "
                f"{EC2_USERDATA_MAX} (sealing has no such limit)"
            )
        write_output(args.output, data, stdout)
        return 0
    cfg = SealConfig(
        region=args.region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"),
        endpoint_url=args.endpoint_url or env.get("SEALBOOT_ENDPOINT_URL"),
        kms_key_id=args.kms_key_id,
        tags=_tags(args.tag),
        format=args.format,
        ttl_seconds=args.expires_in,
        backend=args.backend,
        tier=args.tier or "standard",
        use_fips=args.use_fips,
    )
    if cfg.region is None:
        raise InputError("no region: pass --region or set AWS_REGION")
    log.debug(
        "sealing into %s in %s (endpoint %s), KMS key %s, %s format, hand-off %s",
        cfg.backend,
        cfg.region,
        cfg.endpoint_url or "AWS default",
        cfg.kms_key_id or "the AWS managed one",
        cfg.format,
        args.handoff,
    )
    rendered: list[bytes] = []

    def check(manifest: Manifest) -> None:
        # Rendered before any fragment exists: a manifest too large for EC2 creates nothing.
        rendered.append(render_userdata(manifest, args.handoff))

    def commit(manifest: Manifest) -> None:
        written: list[tuple[str | None, bytes]] = []
        if args.manifest_out is not None:
            written.append((args.manifest_out, (manifest.to_json() + "\n").encode()))
        written.append((args.output, rendered[0]))
        write_all(written, stdout)

    manifest = seal(
        data,
        namespace=args.namespace,
        cluster=args.cluster,
        machine=args.machine,
        role=args.role,
        config=cfg,
        check=check,
        commit=commit,
    )
    log.info("sealed %d fragment(s); manifest %s", manifest.count, manifest.manifest_id)
    return 0


def _run(
    args: argparse.Namespace,
    env: Mapping[str, str],
    stdin: TextIO,
    stdout: TextIO,
    stderr: TextIO,
) -> int:
    """Run the parsed command."""
    if args.command == "seal":
        return _cmd_seal(args, env, stdin, stdout)
    if args.command == "render":
        from sealboot.render import render_userdata

        check_outputs([(args.output, "-o/--output")])
        manifest = read_manifest(args.manifest, stdin)
        write_output(args.output, render_userdata(manifest, args.handoff), stdout)
        return 0
    if args.command == "delete":
        from sealboot.delete import delete

        manifest = read_manifest(args.manifest, stdin, scoped=True)
        endpoint = args.endpoint_url or env.get("SEALBOOT_ENDPOINT_URL")
        _aws_target(args.region, endpoint)
        log.debug(
            "manifest %s names %d fragment(s) in %s",
            manifest.manifest_id,
            manifest.count,
            manifest.backend,
        )
        gone = delete(manifest, region=args.region, endpoint_url=endpoint)
        log.info("%d of %d fragment(s) are gone", len(gone), manifest.count)
        return 0
    if args.command == "policy":
        return policy_cmd.run(args, env, stdout, stderr)
    if args.command == "sweep":
        return sweep_cli.run(args, env, stdout, stderr)
    if args.command == "tag-instance":
        return tag_instance.run(args, env, stdin, stdout)
    if args.command == "inspect":
        from sealboot.render import inspect

        raw = read_input(args.userdata, stdin, USERDATA_READ_MAX)
        manifest = inspect(_gunzip_capped(raw, USERDATA_READ_MAX))
        log.debug(
            "%d bytes of user data carry manifest %s (%d fragment(s))",
            len(raw),
            manifest.manifest_id,
            manifest.count,
        )
        stdout.write(manifest.to_json() + "\n")
        return 0
    raise AssertionError(f"unhandled command {args.command}")


def _parse(argv: Sequence[str] | None, stdout: TextIO, stderr: TextIO) -> argparse.Namespace | int:
    """The parsed arguments, or the exit code when argparse ended the run (usage, --help)."""
    # argparse prints usage, --help and --version itself; send them to our streams.
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            return build_parser().parse_args(argv)
        except SystemExit as exc:
            return int(exc.code or 0)


def main(
    argv: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    stdin: TextIO = sys.stdin,
    stdout: TextIO = sys.stdout,
    stderr: TextIO = sys.stderr,
) -> int:
    """Run the toolkit CLI; return the exit code (see EXIT_CODES)."""
    env = os.environ if env is None else env
    args = _parse(argv, stdout, stderr)
    if isinstance(args, int):
        return args
    verbose = args.verbose + getattr(args, "sub_verbose", 0)
    handler = logging.StreamHandler(stderr)
    handler.setFormatter(_Formatter("%(message)s"))
    root = logging.getLogger("sealboot")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False
    log.debug(
        "sealboot %s, Python %s, command %s", __version__, platform.python_version(), args.command
    )
    started = time.monotonic()
    try:
        return _run(args, env, stdin, stdout, stderr)
    except SealbootError as exc:
        if exc.outcome is None:
            # Whatever fails before the command reached AWS has changed nothing there.
            exc.outcome = UNTOUCHED.get(args.command)
        stderr.write(f"sealboot: error: {exc.message}\n  what to do: {exc.advice}\n")
        return exc.exit_code
    finally:
        log.debug("%s took %.0f ms", args.command, (time.monotonic() - started) * 1000)


class _Formatter(logging.Formatter):
    """``sealboot: message``; -v's extra lines say ``debug:`` so they stand apart."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno < logging.INFO:
            return f"sealboot: debug: {text}"
        return f"sealboot: {text}"


def entrypoint() -> None:
    sys.exit(main())
