"""Delete fragments once their payload is verified and durably written.

Example::

    >>> delete_fragments(STORES[manifest.backend], client, manifest.fragments, policy)
    {}
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from botocore.exceptions import BotoCoreError, ClientError

from sealboot_agent.aws import Client
from sealboot_agent.retry import Exhausted, RetryPolicy, client_error, with_retries
from sealboot_agent.stores import ALREADY_GONE, Store

log = logging.getLogger(__name__)


def _delete_batch(
    store: Store, client: Client, batch: list[str], policy: RetryPolicy
) -> dict[str, str]:
    """Return ``{name: reason}`` for each name of *batch* that is still there."""
    try:
        done = with_retries(
            functools.partial(store.delete, client, batch),
            policy,
            f"{store.delete_operation} {batch[0]}"
            if len(batch) == 1
            else f"{store.delete_operation} of {len(batch)}",
        )
    except ClientError as exc:
        code, _, rid = client_error(exc)
        why = f"{code} (request id {rid})" if rid else code
    except Exhausted as exc:
        why = exc.describe()
    except BotoCoreError as exc:
        why = type(exc).__name__
    else:
        for name, outcome in done.items():
            gone = outcome == ALREADY_GONE
            log.debug("fragment %s %s", name, "was already gone" if gone else "deleted")
        return {}
    return dict.fromkeys(batch, why)


def delete_fragments(
    store: Store, client: Client, names: Sequence[str], policy: RetryPolicy
) -> dict[str, str]:
    """Delete every fragment (idempotent); return ``{name: reason}`` for those left behind."""
    batches = list(store.batches(names, store.delete_max))
    left: dict[str, str] = {}
    if len(batches) <= 1:
        # Most user data is one call: no thread to start and join on the boot path.
        for batch in batches:
            left.update(_delete_batch(store, client, batch, policy))
    else:
        with ThreadPoolExecutor(max_workers=min(8, len(batches))) as pool:
            for part in pool.map(lambda b: _delete_batch(store, client, b, policy), batches):
                left.update(part)
    return left
