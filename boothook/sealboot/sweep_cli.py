"""``sealboot sweep``: its flags, and printing its report.

Example::

    $ sealboot sweep --cluster c1 --older-than 24h --dry-run
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from typing import Any, TextIO

from sealboot.aws import Client, aws_client
from sealboot.decide import parse_duration
from sealboot.errors import AccessDenied, AwsError, InputError
from sealboot.report import ProgressBar
from sealboot.sweep import sweep
from sealboot_agent.stores import STORES
from sealboot_agent.wire import BACKEND_SECRETS_MANAGER, BACKEND_SSM, BACKENDS

BACKEND_ALL = "all"


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def add_parser(subparsers: Any) -> None:
    """Register ``sealboot sweep`` on *subparsers* (an argparse subparsers object)."""
    p = subparsers.add_parser(
        "sweep",
        help="delete fragments nobody will fetch: expired, or their instance is gone",
        description="Find sealboot and CAPA-format fragments by name and tag; delete those "
        "past their expiry tag, older than --older-than, or whose instance is terminated "
        "or gone. Keeps the rest.",
    )
    p.add_argument("--cluster", help="only this cluster's fragments")
    p.add_argument("--namespace", help="only this namespace's fragments")
    p.add_argument(
        "--older-than",
        metavar="DURATION",
        help="also delete fragments created longer ago than this (90s, 30m, 24h, 7d); "
        "CAPA fragments without an expiry tag default to 24h",
    )
    p.add_argument("--dry-run", action="store_true", help="list what would be deleted")
    p.add_argument("--json", action="store_true", help="print a JSON report on stdout")
    p.add_argument("--region", help="AWS region [env AWS_REGION, AWS_DEFAULT_REGION]")
    p.add_argument(
        "--endpoint-url",
        help="endpoint of the fragment store (VPC endpoint, test stack) "
        "[env SEALBOOT_ENDPOINT_URL]; EC2 honours AWS_ENDPOINT_URL_EC2",
    )
    p.add_argument(
        "--backend",
        choices=(*BACKENDS, BACKEND_ALL),
        default=BACKEND_SECRETS_MANAGER,
        help="which store to sweep (default: secrets-manager)",
    )
    p.add_argument("--use-fips", action="store_true", help="use the FIPS endpoints")


def run(args: argparse.Namespace, env: Mapping[str, str], stdout: TextIO, stderr: TextIO) -> int:
    """Run ``sealboot sweep`` with parsed arguments; print the report; return the exit code.

    Raises AwsError (exit 4) or AccessDenied (exit 5) after printing the report when some
    fragments could not be deleted.
    """
    region = args.region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if not region:
        raise InputError("no region: pass --region or set AWS_REGION")
    endpoint = args.endpoint_url or env.get("SEALBOOT_ENDPOINT_URL")
    older_than = parse_duration(args.older_than) if args.older_than else None
    fips = bool(getattr(args, "use_fips", False))
    backends = BACKENDS if args.backend == BACKEND_ALL else (args.backend,)

    def client(service: str, endpoint_url: str | None) -> Client:
        return aws_client(service, region=region, endpoint_url=endpoint_url, use_fips=fips)

    stores = {backend: client(STORES[backend].service, endpoint) for backend in backends}
    bar = ProgressBar(stderr) if _isatty(stderr) else None
    try:
        report = sweep(
            secrets=stores.get(BACKEND_SECRETS_MANAGER),
            ssm=stores.get(BACKEND_SSM),
            ec2=client("ec2", None),
            namespace=args.namespace,
            cluster=args.cluster,
            older_than=older_than,
            dry_run=args.dry_run,
            progress=bar,
        )
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
    else:
        stdout.write(report.summary())
    failed = report.failed
    if failed:
        err_cls = AccessDenied if any(o.denied for o in failed) else AwsError
        raise err_cls(
            f"{len(failed)} fragment(s) could not be deleted; first: {failed[0].error}",
            hint="grant the actions in 'sealboot policy --role controller' and run sweep again",
        )
    return 0
