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
import sys
import zlib
from collections.abc import Mapping, Sequence
from typing import TextIO

from sealboot import policy as policy_cmd
from sealboot import sweep as sweep_cmd
from sealboot.errors import EXIT_CODES, InputError, SealbootError, TooLarge
from sealboot_agent import __version__
from sealboot_agent.wire import (
    BACKENDS,
    FORMATS,
    MANIFEST_MAX_BYTES,
    REGION_RE,
    Manifest,
    WireError,
    check_endpoint_url,
)

log = logging.getLogger("sealboot")

# What `inspect` reads: EC2 user data is at most 16 KB, gzipped or not; this leaves room for a
# copy wrapped by other tools, and bounds the read and the gunzip of a file that is not that.
USERDATA_READ_MAX = 1 << 20


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
    parser.add_argument("-v", "--verbose", action="count", default=0)
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
        default="standard",
        help="ssm: Standard (4 KB values, free) or Advanced (8 KB values) parameters",
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
    sweep_cmd.add_parser(sub)
    sweep_cmd.add_tag_instance_parser(sub)

    inspect = sub.add_parser("inspect", help="print the manifest carried by rendered user data")
    inspect.add_argument(
        "userdata", metavar="USERDATA_FILE", help="rendered user data, or - (at most 1 MiB)"
    )
    return parser


def _read(path: str, stdin: TextIO, limit: int) -> bytes:
    """The bytes of *path* (stdin for ``-``); InputError past *limit* (it may be /dev/zero)."""
    try:
        if path == "-":
            if hasattr(stdin, "buffer"):
                data: bytes = stdin.buffer.read(limit + 1)
            else:
                data = stdin.read(limit + 1).encode()
        else:
            with open(path, "rb") as fh:
                data = fh.read(limit + 1)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from exc
    if len(data) > limit:
        raise InputError(f"{path} is over {limit} bytes, the most this command reads")
    return data


def _write(path: str | None, data: str | bytes, stdout: TextIO) -> None:
    raw = data.encode() if isinstance(data, str) else data
    if path is None or path == "-":
        stdout.flush()
        if hasattr(stdout, "buffer"):
            stdout.buffer.write(raw)
            stdout.buffer.flush()
        else:
            stdout.write(raw.decode("utf-8", "replace"))
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror}") from exc


def _manifest(path: str, stdin: TextIO, *, scoped: bool = False) -> Manifest:
    """The manifest in *path*; *scoped*: also check that its fragments are its own (before a
    delete, as the agent checks before its fetch and delete)."""
    try:
        manifest = Manifest.from_json(
            _read(path, stdin, MANIFEST_MAX_BYTES).decode("utf-8", "replace")
        )
        if scoped:
            manifest.check_scope()
    except WireError as exc:
        raise InputError(f"{path}: {exc}") from exc
    return manifest


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

    data = _read(args.userdata, stdin, MAX_USERDATA)
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
        _write(args.output, data, stdout)
        return 0
    cfg = SealConfig(
        region=args.region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"),
        endpoint_url=args.endpoint_url or env.get("SEALBOOT_ENDPOINT_URL"),
        kms_key_id=args.kms_key_id,
        tags=_tags(args.tag),
        format=args.format,
        ttl_seconds=args.expires_in,
        backend=args.backend,
        tier=args.tier,
        use_fips=args.use_fips,
    )
    if cfg.region is None:
        raise InputError("no region: pass --region or set AWS_REGION")
    manifest = seal(
        data,
        namespace=args.namespace,
        cluster=args.cluster,
        machine=args.machine,
        role=args.role,
        config=cfg,
    )
    try:
        userdata = render_userdata(manifest, args.handoff)
    except SealbootError:
        from sealboot.delete import delete

        # Nothing will ever fetch fragments whose user data cannot be rendered.
        delete(manifest, region=cfg.region, endpoint_url=cfg.endpoint_url)
        raise
    if args.manifest_out:
        _write(args.manifest_out, manifest.to_json() + "\n", stdout)
    _write(args.output, userdata, stdout)
    log.info("sealed %d fragment(s); manifest %s", manifest.count, manifest.manifest_id)
    return 0


def main(
    argv: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    stdin: TextIO = sys.stdin,
    stdout: TextIO = sys.stdout,
    stderr: TextIO = sys.stderr,
) -> int:
    """Run the toolkit CLI; return the exit code (see EXIT_CODES)."""
    env = os.environ if env is None else env
    parser = build_parser()
    try:
        # argparse prints usage, --help and --version itself; send them to our streams.
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    handler = logging.StreamHandler(stderr)
    handler.setFormatter(logging.Formatter("sealboot: %(message)s"))
    root = logging.getLogger("sealboot")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    root.propagate = False
    try:
        if args.command == "seal":
            return _cmd_seal(args, env, stdin, stdout)
        if args.command == "render":
            from sealboot.render import render_userdata

            manifest = _manifest(args.manifest, stdin)
            _write(args.output, render_userdata(manifest, args.handoff), stdout)
            return 0
        if args.command == "delete":
            from sealboot.delete import delete

            manifest = _manifest(args.manifest, stdin, scoped=True)
            endpoint = args.endpoint_url or env.get("SEALBOOT_ENDPOINT_URL")
            _aws_target(args.region, endpoint)
            gone = delete(manifest, region=args.region, endpoint_url=endpoint)
            log.info("%d of %d fragment(s) are gone", len(gone), manifest.count)
            return 0
        if args.command == "policy":
            return policy_cmd.run(args, env, stdout, stderr)
        if args.command == "sweep":
            return sweep_cmd.run(args, env, stdout, stderr)
        if args.command == "tag-instance":
            return sweep_cmd.run_tag_instance(args, env, stdout, stderr)
        if args.command == "inspect":
            from sealboot.render import inspect

            raw = _read(args.userdata, stdin, USERDATA_READ_MAX)
            manifest = inspect(_gunzip_capped(raw, USERDATA_READ_MAX))
            stdout.write(manifest.to_json() + "\n")
            return 0
    except SealbootError as exc:
        stderr.write(f"sealboot: error: {exc.message}\n  what to do: {exc.advice}\n")
        return exc.exit_code
    raise AssertionError(f"unhandled command {args.command}")


def entrypoint() -> None:
    sys.exit(main())
