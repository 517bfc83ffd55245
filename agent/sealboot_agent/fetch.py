"""Get every fragment's bytes from its store: in batches where allowed, one by one otherwise.

Example::

    >>> store = STORES[manifest.backend]
    >>> chunks = fetch_fragments(store, client, manifest.fragments, RetryPolicy(Deadline(300)))
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from botocore.exceptions import BotoCoreError, ClientError

from sealboot_agent.aws import Client
from sealboot_agent.errors import (
    AccessDenied,
    AgentError,
    FragmentMissing,
    IntegrityError,
    ServiceError,
)
from sealboot_agent.retry import Exhausted, RetryPolicy, client_error, with_retries
from sealboot_agent.stores import DENIED, KMS, KMS_KEY, NOT_FOUND, UNREADABLE, Fetched, Store

log = logging.getLogger(__name__)

# A per-fragment answer that another attempt will not change.
_FINAL_PER_FRAGMENT = NOT_FOUND | UNREADABLE | DENIED | KMS | KMS_KEY


def error_for(store: Store, name: str, code: str, message: str, rid: str = "") -> AgentError:
    """Turn an AWS error code for fragment *name* into the agent error the operator acts on."""
    at = f" (request id {rid})" if rid else ""
    if code in NOT_FOUND:
        return FragmentMissing(f"fragment {name} does not exist: {code}{at}", fragment=name)
    if code in UNREADABLE:
        return FragmentMissing(
            f"fragment {name} cannot be read: {code}: {message}{at}", fragment=name
        )
    if code in DENIED:
        return AccessDenied(
            f"access to fragment {name} denied: {code}{at}",
            fragment=name,
            hint=f"grant the instance role {' and '.join(store.node_actions)} on its fragments "
            "(see 'sealboot policy'), plus kms:Decrypt on a customer key. No fragment was deleted",
        )
    if code in KMS or code in KMS_KEY:
        return AccessDenied(
            f"fragment {name} cannot be decrypted: {code}{at}",
            fragment=name,
            hint="grant the instance role kms:Decrypt on the key the fragment was sealed with",
        )
    return ServiceError(f"reading fragment {name} failed: {code}: {message}{at}", fragment=name)


def _take(store: Store, got: Fetched, into: dict[str, bytes]) -> None:
    """Keep *got*'s values; raise for the first fragment no retry can fix."""
    for name, (code, message) in got.errors.items():
        if code in _FINAL_PER_FRAGMENT:
            raise error_for(store, name, code, message, got.request_id)
        # Anything else (throttled, internal) is fetched again alone.
        log.info("%s: %s for %s; will retry it alone", store.get_operation, code, name)
    for name, why in got.bad.items():
        raise IntegrityError(f"fragment {name} {why}", fragment=name)
    into.update(got.values)


def _batches(
    store: Store, client: Client, names: Sequence[str], policy: RetryPolicy, into: dict[str, bytes]
) -> None:
    """Read *names* in batches; return quietly (nothing kept) when the batch call is refused."""
    for batch in store.batches(names, store.get_max):
        try:
            got = with_retries(
                functools.partial(store.get, client, batch),
                policy,
                f"{store.get_operation} of {len(batch)} fragment(s)",
            )
        except ClientError as exc:
            code, message, rid = client_error(exc)
            if not store.batch_unavailable(code):
                raise error_for(store, batch[0], code, message, rid) from exc
            log.info(
                "%s not available (%s); using %s",
                store.get_operation,
                code,
                store.get_one_operation,
            )
            into.clear()
            return
        except Exhausted as exc:
            raise ServiceError(f"reading fragments failed: {exc.describe()}") from exc
        except BotoCoreError as exc:
            raise ServiceError(f"reading fragments failed: {exc}") from exc
        log.debug(
            "%s of %d fragment(s), request id %s", store.get_operation, len(batch), got.request_id
        )
        _take(store, got, into)


def _single(store: Store, client: Client, name: str, policy: RetryPolicy) -> bytes:
    try:
        got = with_retries(
            lambda: store.get_one(client, name), policy, f"{store.get_one_operation} {name}"
        )
    except ClientError as exc:
        raise error_for(store, name, *client_error(exc)) from exc
    except Exhausted as exc:
        raise ServiceError(
            f"reading fragment {name} failed: {exc.describe()}", fragment=name
        ) from exc
    except BotoCoreError as exc:
        raise ServiceError(f"reading fragment {name} failed: {exc}", fragment=name) from exc
    log.debug("%s %s: request id %s", store.get_one_operation, name, got.request_id)
    values: dict[str, bytes] = {}
    _take(store, got, values)
    if name not in values:  # a throttled entry in a one-name batch: not worth a second loop
        code, message = got.errors[name]
        raise ServiceError(f"reading fragment {name} failed: {code}: {message}", fragment=name)
    return values[name]


def fetch_fragments(
    store: Store,
    client: Client,
    names: Sequence[str],
    policy: RetryPolicy,
    *,
    use_batch: bool = True,
) -> list[bytes]:
    """Return the fragments' bytes in order, or raise naming the first fragment that failed."""
    got: dict[str, bytes] = {}
    if use_batch:
        _batches(store, client, names, policy, got)
    missing = [n for n in names if n not in got]
    if len(missing) == 1:
        # The common retry-alone case: no thread to start and join on the boot path.
        got[missing[0]] = _single(store, client, missing[0], policy)
    elif missing:
        with ThreadPoolExecutor(max_workers=min(8, len(missing))) as pool:
            for name, data in zip(
                missing, pool.map(lambda n: _single(store, client, n, policy), missing)
            ):
                got[name] = data
    return [got[n] for n in names]
