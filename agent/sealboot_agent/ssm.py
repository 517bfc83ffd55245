"""The SSM Parameter Store backend: GetParameters and DeleteParameters in batches of ten.

Values are base64 text of the gzip stream, split on 4-character boundaries, which is also how
CAPA's controller writes them; so reassembly is: join the values, then decode.

Example::

    >>> chunks = fetch_parameters(ssm_client, manifest.fragments, RetryPolicy(Deadline(300)))
"""

from __future__ import annotations

import base64
import binascii
import functools
import logging
from collections.abc import Sequence
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from sealboot_agent.aws import Client
from sealboot_agent.errors import AccessDenied, FragmentMissing, IntegrityError, ServiceError
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
from sealboot_agent.wire import SSM_BATCH_MAX

log = logging.getLogger(__name__)


def _complete(resp: dict[str, Any], names: Sequence[str]) -> dict[str, Any]:
    seen = {p.get("Name") for p in resp.get("Parameters", []) if "Value" in p}
    seen |= set(resp.get("InvalidParameters", []))
    if any(n not in seen for n in names):
        raise IncompleteResponse(operation="GetParameters", detail="parameters missing")
    return resp


def _get_batch(client: Client, batch: list[str]) -> dict[str, Any]:
    return _complete(client.get_parameters(Names=batch, WithDecryption=True), batch)


def fetch_parameters(client: Client, names: Sequence[str], policy: RetryPolicy) -> list[bytes]:
    """Return the decoded gzip stream split per fragment, in manifest order."""
    values: dict[str, str] = {}
    for start in range(0, len(names), SSM_BATCH_MAX):
        batch = list(names[start : start + SSM_BATCH_MAX])
        try:
            resp = with_retries(
                functools.partial(_get_batch, client, batch),
                policy,
                f"GetParameters of {len(batch)} fragment(s)",
            )
        except ClientError as exc:
            code, message, rid = client_error(exc)
            at = f" (request id {rid})" if rid else ""
            if code in DENIED:
                raise AccessDenied(
                    f"access to fragments {batch[0]}.. denied: {code}{at}",
                    fragment=batch[0],
                    hint="grant the instance role ssm:GetParameters and "
                    "ssm:DeleteParameters on its fragments; nothing was deleted",
                ) from exc
            if code in KMS or code == "InvalidKeyId":
                raise AccessDenied(
                    f"fragments {batch[0]}.. cannot be decrypted: {code}{at}",
                    fragment=batch[0],
                    hint="grant the instance role kms:Decrypt on the key",
                ) from exc
            raise ServiceError(f"reading fragments failed: {code}: {message}{at}") from exc
        except Exhausted as exc:
            raise ServiceError(f"reading fragments failed: {exc.describe()}") from exc
        except BotoCoreError as exc:
            raise ServiceError(f"reading fragments failed: {exc}") from exc
        log.debug("GetParameters of %d, request id %s", len(batch), request_id(resp))
        missing = resp.get("InvalidParameters", [])
        if missing:
            raise FragmentMissing(
                f"fragment {missing[0]} does not exist: ParameterNotFound", fragment=missing[0]
            )
        for param in resp.get("Parameters", []):
            values[param["Name"]] = param["Value"]
    chunks = []
    for name in names:
        try:
            chunks.append(base64.b64decode("".join(values[name].split()), validate=True))
        except (binascii.Error, ValueError) as exc:
            raise IntegrityError(f"fragment {name} is not base64 text", fragment=name) from exc
    return chunks


def delete_parameters(client: Client, names: Sequence[str], policy: RetryPolicy) -> dict[str, str]:
    """Delete every fragment (idempotent); return ``{name: reason}`` for those left behind."""
    left: dict[str, str] = {}
    for start in range(0, len(names), SSM_BATCH_MAX):
        batch = list(names[start : start + SSM_BATCH_MAX])
        try:
            resp = with_retries(
                functools.partial(client.delete_parameters, Names=batch),
                policy,
                f"DeleteParameters of {len(batch)}",
            )
        except ClientError as exc:
            code, _, rid = client_error(exc)
            left.update({n: f"{code} (request id {rid})" if rid else code for n in batch})
            continue
        except Exhausted as exc:
            left.update({n: exc.describe() for n in batch})
            continue
        except BotoCoreError as exc:
            left.update({n: type(exc).__name__ for n in batch})
            continue
        log.debug(
            "DeleteParameters: deleted %d, already gone %d, request id %s",
            len(resp.get("DeletedParameters", [])),
            len(resp.get("InvalidParameters", [])),
            request_id(resp),
        )
    return left
