"""Delete a machine's fragments (idempotent), e.g. once its node has joined.

Example::

    >>> delete(manifest)
    []
"""

from __future__ import annotations

import logging

from botocore.exceptions import BotoCoreError, ClientError

from sealboot.aws import Client, error_code, secrets_client, wrap
from sealboot_agent.wire import Manifest

log = logging.getLogger(__name__)


def delete(
    manifest: Manifest,
    *,
    client: Client | None = None,
    endpoint_url: str | None = None,
    region: str | None = None,
) -> list[str]:
    """Force-delete every fragment the manifest names; return the names deleted just now."""
    if client is None:
        client = secrets_client(
            region=region or manifest.region, endpoint_url=endpoint_url or manifest.endpoint_url
        )
    deleted = []
    for name in manifest.fragments:
        try:
            client.delete_secret(SecretId=name, ForceDeleteWithoutRecovery=True)
        except ClientError as exc:
            if error_code(exc) == "ResourceNotFoundException":
                log.info("%s: already gone", name)
                continue
            raise wrap(exc, f"deleting {name}") from exc
        except BotoCoreError as exc:
            raise wrap(exc, f"deleting {name}") from exc
        log.info("%s: deleted", name)
        deleted.append(name)
    return deleted
