"""Delete fragments once their payload is verified and durably written.

Example::

    >>> delete_fragments(client, manifest.fragments)
    []
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from botocore.exceptions import BotoCoreError, ClientError

from sealboot_agent.aws import Client

log = logging.getLogger(__name__)


def _delete_one(client: Client, name: str) -> str | None:
    """Return None when *name* is gone, else the reason it is still there."""
    try:
        resp = client.delete_secret(SecretId=name, ForceDeleteWithoutRecovery=True)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "?")
        if code == "ResourceNotFoundException":
            log.debug("fragment %s was already gone", name)
            return None
        rid = exc.response.get("ResponseMetadata", {}).get("RequestId", "")
        return f"{code} (request id {rid})" if rid else code
    except BotoCoreError as exc:
        return type(exc).__name__
    log.debug(
        "deleted %s, request id %s", name, resp.get("ResponseMetadata", {}).get("RequestId", "")
    )
    return None


def delete_fragments(client: Client, names: Sequence[str]) -> dict[str, str]:
    """Delete every fragment (idempotent); return ``{name: reason}`` for those left behind."""
    if not names:
        return {}
    with ThreadPoolExecutor(max_workers=min(8, len(names))) as pool:
        results = list(pool.map(lambda n: _delete_one(client, n), names))
    return {name: why for name, why in zip(names, results) if why is not None}
