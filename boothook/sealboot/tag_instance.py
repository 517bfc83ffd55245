"""``sealboot tag-instance``: tie a manifest's fragments to the instance launched with them.

Example::

    $ sealboot tag-instance m1.json --instance-id i-0123456789abcdef0
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any, TextIO

from botocore.exceptions import BotoCoreError, ClientError

from sealboot.aws import Client, aws_client, wrap
from sealboot.errors import InputError
from sealboot.files import read_manifest
from sealboot.names import INSTANCE_ID_RE, INSTANCE_TAG
from sealboot_agent.stores import STORES
from sealboot_agent.wire import Manifest


def tag_instance(manifest: Manifest, instance_id: str, client: Client) -> list[str]:
    """Tag every fragment of *manifest* with ``sealboot.io/instance-id``; return the names.

    Run it right after RunInstances, so that sweep deletes the fragments once the instance is
    terminated or gone, even if nobody ever boots it or runs ``sealboot delete``.

    Example::

        >>> tag_instance(manifest, "i-0123456789abcdef0", client)
        ['aws.cluster.x-k8s.io/default/c1/m1/...-0']
    """
    if not INSTANCE_ID_RE.match(instance_id):
        raise InputError(f"{instance_id!r} is not an EC2 instance id (i-0123456789abcdef0)")
    store = STORES[manifest.backend]
    done = []
    for name in manifest.fragments:
        try:
            store.tag(client, name, {INSTANCE_TAG: instance_id})
        except (ClientError, BotoCoreError) as exc:
            raise wrap(exc, f"tagging {name} with {INSTANCE_TAG}={instance_id}") from exc
        done.append(name)
    return done


def add_parser(subparsers: Any) -> None:
    """Register ``sealboot tag-instance MANIFEST --instance-id ID`` on *subparsers*."""
    p = subparsers.add_parser(
        "tag-instance",
        help="tie a manifest's fragments to the instance launched with them (for sweep)",
    )
    p.add_argument("manifest", metavar="MANIFEST", help="manifest JSON file, or -")
    p.add_argument("--instance-id", required=True, help="the instance RunInstances returned")
    p.add_argument("--region", help="AWS region (default: the manifest's)")
    p.add_argument("--endpoint-url", help="endpoint (default: the manifest's)")


def run(args: argparse.Namespace, env: Mapping[str, str], stdin: TextIO, stdout: TextIO) -> int:
    """Run ``sealboot tag-instance``; read a ``-`` manifest from *stdin*; print the names."""
    manifest = read_manifest(args.manifest, stdin)
    client = aws_client(
        STORES[manifest.backend].service,
        region=args.region or manifest.region or env.get("AWS_REGION"),
        endpoint_url=args.endpoint_url or env.get("SEALBOOT_ENDPOINT_URL") or manifest.endpoint_url,
        use_fips=manifest.use_fips,
    )
    for name in tag_instance(manifest, args.instance_id, client):
        stdout.write(name + "\n")
    return 0
