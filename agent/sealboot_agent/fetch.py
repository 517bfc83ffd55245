"""Get every fragment's bytes: BatchGetSecretValue where allowed, GetSecretValue otherwise.

Example::

    >>> chunks = fetch_fragments(client, manifest.fragments, RetryPolicy(Deadline(300)))
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from sealboot_agent.aws import Client
from sealboot_agent.errors import (
    AccessDenied,
    AgentError,
    FragmentMissing,
    IntegrityError,
    ServiceError,
)
from sealboot_agent.retry import (
    DENIED,
    KMS,
    Exhausted,
    IncompleteResponse,
    RetryPolicy,
    client_error,
    request_id,
    with_retries,
)
from sealboot_agent.wire import BATCH_GET_MAX_IDS

log = logging.getLogger(__name__)

_MISSING = {"ResourceNotFoundException"}
# Endpoints that predate BatchGetSecretValue (older LocalStack, some VPC proxies) say so like this.
_UNSUPPORTED = {"UnknownOperationException", "InvalidAction", "NotImplemented"}
_GONE = {"InvalidRequestException"}  # e.g. "marked for deletion"
_FINAL_PER_SECRET = _MISSING | _GONE | DENIED | KMS


def error_for(name: str, code: str, message: str, rid: str = "") -> AgentError:
    """Turn an AWS error code for fragment *name* into the agent error the operator acts on."""
    at = f" (request id {rid})" if rid else ""
    if code in _MISSING:
        return FragmentMissing(f"fragment {name} does not exist: {code}{at}", fragment=name)
    if code in _GONE:
        return FragmentMissing(
            f"fragment {name} cannot be read: {code}: {message}{at}", fragment=name
        )
    if code in DENIED:
        return AccessDenied(f"access to fragment {name} denied: {code}{at}", fragment=name)
    if code in KMS:
        return AccessDenied(
            f"fragment {name} cannot be decrypted: {code}{at}",
            fragment=name,
            hint="grant the instance role kms:Decrypt on the key the fragment was sealed with",
        )
    return ServiceError(f"reading fragment {name} failed: {code}: {message}{at}", fragment=name)


def _value(name: str, item: dict[str, Any]) -> bytes:
    if "SecretBinary" in item:
        return bytes(item["SecretBinary"])
    raise IntegrityError(
        f"fragment {name} holds no SecretBinary (sealboot and CAPA write binary fragments)",
        fragment=name,
    )


def _complete(resp: dict[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """Every asked-for name must come back as a value or an error; else the body was cut."""
    seen = {
        item.get("Name")
        for item in resp.get("SecretValues", [])
        if "SecretBinary" in item or "SecretString" in item
    }
    seen |= {err.get("SecretId") for err in resp.get("Errors", [])}
    lost = [n for n in names if n not in seen]
    if lost:
        raise IncompleteResponse(
            operation="BatchGetSecretValue",
            detail=f"{len(lost)} fragment(s) missing from the answer",
        )
    return resp


def _batch(client: Client, names: Sequence[str], policy: RetryPolicy) -> dict[str, bytes]:
    resp = with_retries(
        lambda: _complete(client.batch_get_secret_value(SecretIdList=list(names)), names),
        policy,
        f"BatchGetSecretValue of {len(names)} fragment(s)",
    )
    rid = request_id(resp)
    log.debug("BatchGetSecretValue of %d fragment(s), request id %s", len(names), rid)
    for err in resp.get("Errors", []):
        code = err.get("ErrorCode", "?")
        if code in _FINAL_PER_SECRET:
            raise error_for(err.get("SecretId", "?"), code, err.get("Message", ""), rid)
        # Anything else (throttled, internal) is retried below, one GetSecretValue each.
        log.info("BatchGetSecretValue: %s for %s; will retry it alone", code, err.get("SecretId"))
    return {
        item.get("Name", ""): _value(item.get("Name", ""), item)
        for item in resp.get("SecretValues", [])
    }


def _get_one(client: Client, name: str) -> dict[str, Any]:
    resp: dict[str, Any] = client.get_secret_value(SecretId=name)
    if "SecretBinary" not in resp and "SecretString" not in resp:
        raise IncompleteResponse(operation="GetSecretValue", detail=f"no value for {name}")
    return resp


def _single(client: Client, name: str, policy: RetryPolicy) -> bytes:
    try:
        resp = with_retries(lambda: _get_one(client, name), policy, f"GetSecretValue {name}")
    except ClientError as exc:
        raise error_for(name, *client_error(exc)) from exc
    except Exhausted as exc:
        raise ServiceError(
            f"reading fragment {name} failed: {exc.describe()}", fragment=name
        ) from exc
    except BotoCoreError as exc:
        raise ServiceError(f"reading fragment {name} failed: {exc}", fragment=name) from exc
    log.debug("GetSecretValue %s: request id %s", name, request_id(resp))
    return _value(name, resp)


def fetch_fragments(
    client: Client, names: Sequence[str], policy: RetryPolicy, *, use_batch: bool = True
) -> list[bytes]:
    """Return the fragments' bytes in order, or raise naming the first fragment that failed."""
    got: dict[str, bytes] = {}
    if use_batch:
        try:
            for start in range(0, len(names), BATCH_GET_MAX_IDS):
                got.update(_batch(client, names[start : start + BATCH_GET_MAX_IDS], policy))
        except ClientError as exc:
            code, message, rid = client_error(exc)
            if code not in DENIED | _UNSUPPORTED:
                raise error_for(names[0], code, message, rid) from exc
            # CAPA's stock node policy grants GetSecretValue but not BatchGetSecretValue.
            log.info("BatchGetSecretValue not available (%s); using GetSecretValue", code)
            got = {}
        except Exhausted as exc:
            raise ServiceError(f"reading fragments failed: {exc.describe()}") from exc
        except BotoCoreError as exc:
            raise ServiceError(f"reading fragments failed: {exc}") from exc
    missing = [n for n in names if n not in got]
    if missing:
        with ThreadPoolExecutor(max_workers=min(8, len(missing))) as pool:
            for name, data in zip(missing, pool.map(lambda n: _single(client, n, policy), missing)):
                got[name] = data
    return [got[n] for n in names]
