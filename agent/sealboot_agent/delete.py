"""Delete fragments once their payload is verified and durably written.

Example::

    >>> delete_fragments(client, manifest.fragments, RetryPolicy(Deadline(60)))
    {}
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from botocore.exceptions import BotoCoreError, ClientError

from sealboot_agent.aws import Client
from sealboot_agent.retry import Exhausted, RetryPolicy, client_error, request_id, with_retries

log = logging.getLogger(__name__)


def _delete_one(client: Client, name: str, policy: RetryPolicy) -> str | None:
    """Return None when *name* is gone, else the reason it is still there."""
    try:
        resp = with_retries(
            lambda: client.delete_secret(SecretId=name, ForceDeleteWithoutRecovery=True),
            policy,
            f"DeleteSecret {name}",
        )
    except ClientError as exc:
        code, _, rid = client_error(exc)
        if code == "ResourceNotFoundException":
            log.debug("fragment %s was already gone", name)
            return None
        return f"{code} (request id {rid})" if rid else code
    except Exhausted as exc:
        return exc.describe()
    except BotoCoreError as exc:
        return type(exc).__name__
    log.debug("deleted %s, request id %s", name, request_id(resp))
    return None


def delete_fragments(client: Client, names: Sequence[str], policy: RetryPolicy) -> dict[str, str]:
    """Delete every fragment (idempotent); return ``{name: reason}`` for those left behind."""
    if len(names) <= 1:
        # Most user data is one fragment: no thread to start and join on the boot path.
        results = [_delete_one(client, n, policy) for n in names]
    else:
        with ThreadPoolExecutor(max_workers=min(8, len(names))) as pool:
            results = list(pool.map(lambda n: _delete_one(client, n, policy), names))
    return {name: why for name, why in zip(names, results) if why is not None}
