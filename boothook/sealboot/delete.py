"""Delete a machine's fragments (idempotent), e.g. once its node has joined.

Example::

    >>> delete(manifest)
    ['aws.cluster.x-k8s.io/default/c1/m1/...-0']
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from botocore.exceptions import BotoCoreError, ClientError

from sealboot.aws import Client, aws_client, error_code, request_id, wrap
from sealboot.errors import NOTHING_DELETED, SealbootError
from sealboot_agent.wire import BACKEND_SSM, SSM_BATCH_MAX, Manifest

log = logging.getLogger(__name__)


def delete(
    manifest: Manifest,
    *,
    client: Client | None = None,
    endpoint_url: str | None = None,
    region: str | None = None,
) -> list[str]:
    """Delete every fragment the manifest names; return the names that are now gone.

    On failure the error's ``outcome`` says which fragments are gone and which are left.
    """
    ssm = manifest.backend == BACKEND_SSM
    if client is None:
        try:
            client = aws_client(
                "ssm" if ssm else "secretsmanager",
                region=region or manifest.region,
                endpoint_url=endpoint_url or manifest.endpoint_url,
                use_fips=manifest.use_fips,
            )
        except SealbootError as exc:
            exc.outcome = NOTHING_DELETED
            raise
    gone: list[str] = []
    try:
        if ssm:
            _delete_parameters(client, list(manifest.fragments), gone)
        else:
            _delete_secrets(client, manifest.fragments, gone)
    except SealbootError as exc:
        exc.outcome = _outcome(manifest.fragments, gone)
        raise
    return gone


def _outcome(names: Sequence[str], gone: list[str]) -> str:
    """What a failed delete left behind, and that running it again is safe."""
    left = [n for n in names if n not in gone]
    if not gone:
        head = f"{NOTHING_DELETED}: all {len(names)} fragment(s) are still there"
    else:
        head = f"{len(gone)} of {len(names)} fragment(s) are gone, {len(left)} left"
    # The manifest still names them all; a few are enough to recognise.
    shown = ", ".join(left[:3]) + (f", and {len(left) - 3} more" if len(left) > 3 else "")
    return f"{head} ({shown}); run the same 'sealboot delete' again once fixed"


def _delete_secrets(client: Client, names: Sequence[str], gone: list[str]) -> None:
    for name in names:
        started = time.monotonic()
        try:
            resp = client.delete_secret(SecretId=name, ForceDeleteWithoutRecovery=True)
        except ClientError as exc:
            if error_code(exc) == "ResourceNotFoundException":
                log.info("%s: already gone", name)
                gone.append(name)
                continue
            raise wrap(exc, f"deleting {name}") from exc
        except BotoCoreError as exc:
            raise wrap(exc, f"deleting {name}") from exc
        log.info("%s: deleted", name)
        log.debug(
            "deleted %s in %.0f ms, request id %s",
            name,
            (time.monotonic() - started) * 1000,
            request_id(resp),
        )
        gone.append(name)


def _delete_parameters(client: Client, names: list[str], gone: list[str]) -> None:
    for start in range(0, len(names), SSM_BATCH_MAX):
        batch = names[start : start + SSM_BATCH_MAX]
        started = time.monotonic()
        try:
            resp = client.delete_parameters(Names=batch)
        except (ClientError, BotoCoreError) as exc:
            raise wrap(exc, f"deleting {batch[0]}..") from exc
        log.debug(
            "DeleteParameters of %d name(s) in %.0f ms, request id %s",
            len(batch),
            (time.monotonic() - started) * 1000,
            request_id(resp),
        )
        for name in resp.get("DeletedParameters", []):
            log.info("%s: deleted", name)
        for name in resp.get("InvalidParameters", []):
            log.info("%s: already gone", name)
        gone.extend(resp.get("DeletedParameters", []) + resp.get("InvalidParameters", []))
