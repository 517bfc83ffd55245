"""Get every fragment's bytes: BatchGetSecretValue where allowed, GetSecretValue otherwise.

Example::

    >>> chunks = fetch_fragments(client, manifest.fragments)
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
from sealboot_agent.wire import BATCH_GET_MAX_IDS

log = logging.getLogger(__name__)

_DENIED = {"AccessDeniedException", "AccessDenied", "UnauthorizedOperation"}
_KMS = {"DecryptionFailure", "KMSAccessDeniedException", "KMSDisabledException"}
_MISSING = {"ResourceNotFoundException"}
# Endpoints that predate BatchGetSecretValue (older LocalStack, some VPC proxies) say so like this.
_UNSUPPORTED = {"UnknownOperationException", "InvalidAction", "NotImplemented"}
_GONE = {"InvalidRequestException"}  # e.g. "marked for deletion"


def error_for(name: str, code: str, message: str, request_id: str = "") -> AgentError:
    """Turn an AWS error code for fragment *name* into the agent error the operator acts on."""
    rid = f" (request id {request_id})" if request_id else ""
    if code in _MISSING:
        return FragmentMissing(f"fragment {name} does not exist: {code}{rid}", fragment=name)
    if code in _GONE:
        return FragmentMissing(
            f"fragment {name} cannot be read: {code}: {message}{rid}", fragment=name
        )
    if code in _DENIED:
        return AccessDenied(f"access to fragment {name} denied: {code}{rid}", fragment=name)
    if code in _KMS:
        return AccessDenied(
            f"fragment {name} cannot be decrypted: {code}{rid}",
            fragment=name,
            hint="grant the instance role kms:Decrypt on the key the fragment was sealed with",
        )
    return ServiceError(f"reading fragment {name} failed: {code}: {message}{rid}", fragment=name)


def client_error(exc: ClientError) -> tuple[str, str, str]:
    """(code, message, request id) of a botocore error; a bare 403 counts as access denied."""
    err = exc.response.get("Error", {})
    code = str(err.get("Code", "?"))
    message = str(err.get("Message", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if status == 403 and code not in _DENIED | _KMS:
        # Some endpoints answer 403 in a body botocore cannot parse; it is still a denial.
        code, message = "AccessDeniedException", f"HTTP 403 {message[:200]}"
    return code, message, _request_id(exc.response)


def _value(name: str, item: dict[str, Any]) -> bytes:
    if "SecretBinary" in item:
        data = item["SecretBinary"]
        return bytes(data)
    raise IntegrityError(
        f"fragment {name} holds no SecretBinary (sealboot and CAPA write binary fragments)",
        fragment=name,
    )


def _request_id(resp: dict[str, Any]) -> str:
    return str(resp.get("ResponseMetadata", {}).get("RequestId", ""))


def _batch(client: Client, names: Sequence[str]) -> dict[str, bytes]:
    resp = client.batch_get_secret_value(SecretIdList=list(names))
    rid = _request_id(resp)
    log.debug("BatchGetSecretValue of %d fragment(s), request id %s", len(names), rid)
    errors = resp.get("Errors", [])
    if errors:
        first = errors[0]
        raise error_for(
            first.get("SecretId", "?"), first.get("ErrorCode", "?"), first.get("Message", ""), rid
        )
    got: dict[str, bytes] = {}
    for item in resp.get("SecretValues", []):
        name = item.get("Name", "")
        got[name] = _value(name, item)
    return got


def _single(client: Client, name: str) -> bytes:
    try:
        resp = client.get_secret_value(SecretId=name)
    except ClientError as exc:
        raise error_for(name, *client_error(exc)) from exc
    except BotoCoreError as exc:
        raise ServiceError(f"reading fragment {name} failed: {exc}", fragment=name) from exc
    log.debug("GetSecretValue %s: request id %s", name, _request_id(resp))
    return _value(name, resp)


def fetch_fragments(client: Client, names: Sequence[str], *, use_batch: bool = True) -> list[bytes]:
    """Return the fragments' bytes in order, or raise naming the first fragment that failed."""
    got: dict[str, bytes] = {}
    if use_batch:
        try:
            for start in range(0, len(names), BATCH_GET_MAX_IDS):
                got.update(_batch(client, names[start : start + BATCH_GET_MAX_IDS]))
        except ClientError as exc:
            code, message, rid = client_error(exc)
            if code not in _DENIED | _UNSUPPORTED:
                raise error_for(names[0], code, message, rid) from exc
            # CAPA's stock node policy grants GetSecretValue but not BatchGetSecretValue.
            log.info("BatchGetSecretValue not available (%s); using GetSecretValue", code)
            got = {}
        except BotoCoreError as exc:
            raise ServiceError(f"reading fragments failed: {exc}") from exc
    missing = [n for n in names if n not in got]
    if missing:
        with ThreadPoolExecutor(max_workers=min(8, len(missing))) as pool:
            for name, data in zip(missing, pool.map(lambda n: _single(client, n), missing)):
                got[name] = data
    return [got[n] for n in names]
