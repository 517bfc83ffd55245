"""Delete a machine's fragments (idempotent), e.g. once its node has joined.

Example::

    >>> delete(manifest)
    ['aws.cluster.x-k8s.io/default/c1/m1/...-0']
"""

from __future__ import annotations

import logging

from botocore.exceptions import BotoCoreError, ClientError

from sealboot.aws import Client, aws_client, error_code, wrap
from sealboot_agent.wire import BACKEND_SSM, SSM_BATCH_MAX, Manifest

log = logging.getLogger(__name__)


def delete(
    manifest: Manifest,
    *,
    client: Client | None = None,
    endpoint_url: str | None = None,
    region: str | None = None,
) -> list[str]:
    """Delete every fragment the manifest names; return the names that are now gone."""
    ssm = manifest.backend == BACKEND_SSM
    if client is None:
        client = aws_client(
            "ssm" if ssm else "secretsmanager",
            region=region or manifest.region,
            endpoint_url=endpoint_url or manifest.endpoint_url,
            use_fips=manifest.use_fips,
        )
    if ssm:
        return _delete_parameters(client, list(manifest.fragments))
    gone = []
    for name in manifest.fragments:
        try:
            client.delete_secret(SecretId=name, ForceDeleteWithoutRecovery=True)
        except ClientError as exc:
            if error_code(exc) == "ResourceNotFoundException":
                log.info("%s: already gone", name)
                gone.append(name)
                continue
            raise wrap(exc, f"deleting {name}") from exc
        except BotoCoreError as exc:
            raise wrap(exc, f"deleting {name}") from exc
        log.info("%s: deleted", name)
        gone.append(name)
    return gone


def _delete_parameters(client: Client, names: list[str]) -> list[str]:
    gone = []
    for start in range(0, len(names), SSM_BATCH_MAX):
        batch = names[start : start + SSM_BATCH_MAX]
        try:
            resp = client.delete_parameters(Names=batch)
        except (ClientError, BotoCoreError) as exc:
            raise wrap(exc, f"deleting {batch[0]}..") from exc
        for name in resp.get("DeletedParameters", []):
            log.info("%s: deleted", name)
        for name in resp.get("InvalidParameters", []):
            log.info("%s: already gone", name)
        gone.extend(resp.get("DeletedParameters", []) + resp.get("InvalidParameters", []))
    return gone
