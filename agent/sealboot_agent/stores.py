"""Where fragments live: one ``Store`` per backend, and the one table of AWS error codes.

A store knows its backend's API (names of operations, batch sizes, value encoding, which
error means "already gone") and makes exactly one call per method: retrying is the caller's
(the agent's deadline loop in retry.py; botocore's own retries in the toolkit). This module is
part of the wire contract: it imports only the standard library, botocore and ``wire``, so the
toolkit may use it too.

Example::

    >>> store = STORES[manifest.backend]
    >>> got = store.get(client, manifest.fragments[: store.get_max])
    >>> store.delete(client, [manifest.fragments[0]])
    {'aws.cluster.x-k8s.io/default/c1/m1/Ab12-0': 'deleted'}
"""

from __future__ import annotations

import base64
import binascii
import datetime
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from sealboot_agent.wire import (
    BACKEND_SECRETS_MANAGER,
    BACKEND_SSM,
    BATCH_GET_MAX_IDS,
    CAPA_FRAGMENT_SIZE,
    CAPA_SSM_FRAGMENT_SIZE,
    FORMAT_CAPA,
    SECRETS_MANAGER_MAX_VALUE,
    SSM_ADVANCED_MAX,
    SSM_BATCH_MAX,
    SSM_STANDARD_MAX,
    split,
)

Client = Any

# --- The one table of AWS error codes -------------------------------------------------------

# fmt: off
THROTTLING = frozenset({
    "ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded",
    "RequestThrottled", "RequestThrottledException", "SlowDown", "ThrottledException",
})
TRANSIENT = frozenset({
    "InternalServiceError", "InternalServiceErrorException", "InternalFailure", "InternalError",
    "InternalServerError", "ServiceUnavailable", "ServiceUnavailableException", "RequestTimeout",
    "RequestTimeoutException", "PriorRequestNotComplete",
})
# fmt: on
# Worth another attempt: the same call may well succeed in a moment.
RETRYABLE = THROTTLING | TRANSIENT
DENIED = frozenset({"AccessDeniedException", "AccessDenied", "UnauthorizedOperation"})
# The fragment exists but its KMS key will not decrypt it for this caller.
KMS = frozenset({"DecryptionFailure", "KMSAccessDeniedException", "KMSDisabledException"})
# SSM's word for a KMS key it cannot use (seal: a wrong --kms-key-id; fetch: a deleted key).
KMS_KEY = frozenset({"InvalidKeyId"})
NOT_FOUND = frozenset({"ResourceNotFoundException", "ParameterNotFound", "InvalidResourceId"})
EXISTS = frozenset({"ResourceExistsException", "ParameterAlreadyExists"})
# Secrets Manager says this of a secret scheduled for deletion (and of other bad requests).
UNREADABLE = frozenset({"InvalidRequestException"})
# Endpoints that predate an operation (older LocalStack, some VPC proxies) say so like this.
UNSUPPORTED = frozenset({"UnknownOperationException", "InvalidAction", "NotImplemented"})

DELETED = "deleted"
ALREADY_GONE = "already-gone"


def error_code(exc: ClientError) -> str:
    """The AWS error code of *exc* as the endpoint sent it ("" when it sent none)."""
    return str(exc.response.get("Error", {}).get("Code", "") or "")


def http_status(exc: ClientError) -> int:
    """The HTTP status of the answer that raised *exc* (0 when unknown)."""
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def is_denied(code: str, status: int = 0) -> bool:
    """Whether an answer means "not allowed"; a bare 403 counts (some endpoints send no code).

    Example::

        >>> is_denied("", 403), is_denied("DecryptionFailure", 403)
        (True, False)
    """
    return code in DENIED or (status == 403 and code not in KMS | KMS_KEY)


def request_id(resp: Any) -> str:
    """The AWS request id of a response ("" when absent)."""
    meta = resp.get("ResponseMetadata", {}) if isinstance(resp, Mapping) else {}
    return str(meta.get("RequestId") or "")


class IncompleteResponse(BotoCoreError):  # type: ignore[misc]
    """A 200 answer that lacks what every real answer has: a connection cut mid-body."""

    fmt = "incomplete response to {operation}: {detail}"


# --- Results ----------------------------------------------------------------------------------


@dataclass
class Fetched:
    """One read call's answer: values by name, per-name AWS errors, values of the wrong shape."""

    values: dict[str, bytes] = field(default_factory=dict)
    # name -> (code, message): the call succeeded, this fragment did not.
    errors: dict[str, tuple[str, str]] = field(default_factory=dict)
    # name -> why its value is unusable (never the value itself).
    bad: dict[str, str] = field(default_factory=dict)
    request_id: str = ""


@dataclass(frozen=True)
class Listed:
    """A stored item under the root: name, tags (None when the listing does not carry them)."""

    name: str
    tags: dict[str, str] | None
    created: datetime.datetime | None


PRESENT, MISSING, DELETING, PLAINTEXT, UNANSWERED = (
    "present",
    "missing",
    "scheduled-for-deletion",
    "plaintext",
    "unanswered",
)


@dataclass(frozen=True)
class Probed:
    """What a metadata-only look at one fragment found; *detail* never holds a value."""

    name: str
    state: str
    detail: str = ""
    request_id: str = ""


def _tag_map(tags: Any) -> dict[str, str]:
    return {t["Key"]: t.get("Value", "") for t in tags or ()}


def _aws_tags(tags: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def _when(value: Any) -> datetime.datetime | None:
    return value if isinstance(value, datetime.datetime) else None


# --- The stores -------------------------------------------------------------------------------


class Store:
    """A fragment backend; every method makes one AWS call (the caller retries).

    Example::

        >>> STORES["ssm"].service, STORES["ssm"].delete_max
        ('ssm', 10)
    """

    backend: str = ""
    service: str = ""
    get_max: int = 1  # names per get()
    delete_max: int = 1  # names per delete()
    probe_max: int = 1  # names per probe()
    get_operation: str = ""
    get_one_operation: str = ""
    delete_operation: str = ""
    probe_operation: str = ""
    delete_command: str = ""  # how an operator deletes one by hand (NAME stands for the name)
    tiers: tuple[str, ...] = ("standard",)  # what create()'s *tier* may be
    node_actions: tuple[str, ...] = ()  # what a fetch calls: read, then delete

    def batches(self, names: Sequence[str], size: int) -> Iterator[list[str]]:
        """*names* in slices of at most *size*, in order."""
        for start in range(0, len(names), size):
            yield list(names[start : start + size])

    def encode(self, stream: bytes, fmt: str, tier: str = "standard") -> list[bytes]:
        """The fragment values that store *stream* (the gzip stream) in format *fmt*."""
        raise NotImplementedError

    def get(self, client: Client, names: Sequence[str]) -> Fetched:
        """Read up to ``get_max`` fragments in one call, decrypted and decoded."""
        raise NotImplementedError

    def get_one(self, client: Client, name: str) -> Fetched:
        """Read one fragment with the single-item operation (the batch one may be denied)."""
        return self.get(client, [name])

    def batch_unavailable(self, code: str) -> bool:
        """Whether *code* from get() means "use get_one() instead" rather than a failure."""
        return False

    def delete(self, client: Client, names: Sequence[str]) -> dict[str, str]:
        """Delete up to ``delete_max`` fragments in one call: name -> DELETED or ALREADY_GONE."""
        raise NotImplementedError

    def create(
        self,
        client: Client,
        name: str,
        value: bytes,
        *,
        tags: Mapping[str, str],
        description: str,
        kms_key_id: str | None = None,
        tier: str = "standard",
    ) -> dict[str, Any]:
        """Create one fragment holding *value* (one of ``encode``'s); AWS's answer."""
        kwargs: dict[str, Any] = {
            "Name": name,
            **self._value_fields(value, tier),
            "Description": description,
            "Tags": _aws_tags(tags),
        }
        if kms_key_id:
            kwargs[self._key_field] = kms_key_id
        resp: dict[str, Any] = getattr(client, self._create_method)(**kwargs)
        return resp

    # What create() sends: the operation, the field naming the KMS key, the value's fields.
    _create_method = ""
    _key_field = ""

    def _value_fields(self, value: bytes, tier: str) -> dict[str, Any]:
        raise NotImplementedError

    def list_fragments(
        self, client: Client, root: str, *, tag_key: str | None = None, page_size: int = 50
    ) -> Iterator[Listed]:
        """Everything stored under *root* (botocore pages; a page is one call)."""
        raise NotImplementedError

    def tags(self, client: Client, name: str) -> dict[str, str] | None:
        """The tags of *name*, or None when it is gone."""
        raise NotImplementedError

    def tag(self, client: Client, name: str, tags: Mapping[str, str]) -> None:
        """Add *tags* to fragment *name* (the toolkit's tag-instance)."""
        raise NotImplementedError

    def probe(self, client: Client, names: Sequence[str]) -> list[Probed]:
        """Look at up to ``probe_max`` fragments without reading or decrypting any value."""
        raise NotImplementedError


class SecretsManagerStore(Store):
    """Secrets Manager: binary secrets, BatchGetSecretValue, one DeleteSecret per name."""

    backend = BACKEND_SECRETS_MANAGER
    service = "secretsmanager"
    get_max = BATCH_GET_MAX_IDS
    get_operation = "BatchGetSecretValue"
    get_one_operation = "GetSecretValue"
    delete_operation = "DeleteSecret"
    probe_operation = "DescribeSecret"
    node_actions = ("secretsmanager:GetSecretValue", "secretsmanager:DeleteSecret")
    delete_command = (
        "aws secretsmanager delete-secret --force-delete-without-recovery --secret-id NAME"
    )

    def encode(self, stream: bytes, fmt: str, tier: str = "standard") -> list[bytes]:
        return split(
            stream, CAPA_FRAGMENT_SIZE if fmt == FORMAT_CAPA else SECRETS_MANAGER_MAX_VALUE
        )

    @staticmethod
    def _take(item: Mapping[str, Any], name: str, out: Fetched) -> None:
        if "SecretBinary" in item:
            out.values[name] = bytes(item["SecretBinary"])
        else:
            out.bad[name] = "holds no SecretBinary (sealboot and CAPA write binary fragments)"

    def get(self, client: Client, names: Sequence[str]) -> Fetched:
        resp = client.batch_get_secret_value(SecretIdList=list(names))
        items = [
            i for i in resp.get("SecretValues", []) if "SecretBinary" in i or "SecretString" in i
        ]
        out = Fetched(request_id=request_id(resp))
        for err in resp.get("Errors", []):
            name = str(err.get("SecretId", "?"))
            out.errors[name] = (str(err.get("ErrorCode", "?")), str(err.get("Message", "")))
        for item in items:
            self._take(item, str(item.get("Name", "")), out)
        # Every asked-for name comes back as a value or an error; else the body was cut.
        lost = [
            n for n in names if n not in out.values and n not in out.bad and n not in out.errors
        ]
        if lost:
            raise IncompleteResponse(
                operation=self.get_operation,
                detail=f"{len(lost)} fragment(s) missing from the answer",
            )
        return out

    def get_one(self, client: Client, name: str) -> Fetched:
        resp = client.get_secret_value(SecretId=name)
        if "SecretBinary" not in resp and "SecretString" not in resp:
            raise IncompleteResponse(
                operation=self.get_one_operation, detail=f"no value for {name}"
            )
        out = Fetched(request_id=request_id(resp))
        self._take(resp, name, out)
        return out

    def batch_unavailable(self, code: str) -> bool:
        # CAPA's stock node policy grants GetSecretValue but not BatchGetSecretValue.
        return code in DENIED or code in UNSUPPORTED

    def delete(self, client: Client, names: Sequence[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for name in names:  # delete_max is 1: one call
            try:
                client.delete_secret(SecretId=name, ForceDeleteWithoutRecovery=True)
            except ClientError as exc:
                if error_code(exc) not in NOT_FOUND:
                    raise
                out[name] = ALREADY_GONE
            else:
                out[name] = DELETED
        return out

    _create_method = "create_secret"
    _key_field = "KmsKeyId"

    def _value_fields(self, value: bytes, tier: str) -> dict[str, Any]:
        return {"SecretBinary": value}

    def list_fragments(
        self, client: Client, root: str, *, tag_key: str | None = None, page_size: int = 100
    ) -> Iterator[Listed]:
        filters: list[dict[str, Any]] = [{"Key": "name", "Values": [root.rstrip("/") + "/"]}]
        if tag_key is not None:
            filters.append({"Key": "tag-key", "Values": [tag_key]})
        pages = client.get_paginator("list_secrets").paginate(
            Filters=filters, PaginationConfig={"PageSize": page_size}
        )
        for page in pages:
            for item in page.get("SecretList", []):
                yield Listed(
                    item["Name"], _tag_map(item.get("Tags")), _when(item.get("CreatedDate"))
                )

    def tag(self, client: Client, name: str, tags: Mapping[str, str]) -> None:
        client.tag_resource(SecretId=name, Tags=_aws_tags(tags))

    def tags(self, client: Client, name: str) -> dict[str, str] | None:
        try:
            resp = client.describe_secret(SecretId=name)
        except ClientError as exc:
            if error_code(exc) in NOT_FOUND:
                return None
            raise
        return _tag_map(resp.get("Tags"))

    def probe(self, client: Client, names: Sequence[str]) -> list[Probed]:
        out = []
        for name in names:  # probe_max is 1: one call
            try:
                resp = client.describe_secret(SecretId=name)
            except ClientError as exc:
                if error_code(exc) not in NOT_FOUND:
                    raise
                out.append(Probed(name, MISSING))
                continue
            rid = request_id(resp)
            deleted = resp.get("DeletedDate")
            if deleted:
                out.append(Probed(name, DELETING, str(deleted), rid))
            else:
                out.append(Probed(name, PRESENT, "", rid))
        return out


class SsmStore(Store):
    """SSM Parameter Store: SecureString parameters of base64 text, in batches of ten."""

    backend = BACKEND_SSM
    service = "ssm"
    get_max = SSM_BATCH_MAX
    delete_max = SSM_BATCH_MAX
    probe_max = SSM_BATCH_MAX
    get_operation = get_one_operation = probe_operation = "GetParameters"
    delete_operation = "DeleteParameters"
    node_actions = ("ssm:GetParameters", "ssm:DeleteParameters")
    delete_command = "aws ssm delete-parameter --name NAME"
    tiers = ("standard", "advanced")  # Standard: 4 KB values, free; Advanced: 8 KB

    def encode(self, stream: bytes, fmt: str, tier: str = "standard") -> list[bytes]:
        # Base64 text, split on 4-character boundaries (as CAPA's controller writes it), so each
        # value decodes on its own and reassembly is: decode each, then join.
        if fmt == FORMAT_CAPA:
            size = CAPA_SSM_FRAGMENT_SIZE
        else:
            size = SSM_ADVANCED_MAX if tier == "advanced" else SSM_STANDARD_MAX
        return split(base64.b64encode(stream), size)

    def get(self, client: Client, names: Sequence[str]) -> Fetched:
        resp = client.get_parameters(Names=list(names), WithDecryption=True)
        params = {p.get("Name"): p for p in resp.get("Parameters", []) if "Value" in p}
        missing = [str(n) for n in resp.get("InvalidParameters", [])]
        if any(n not in params and n not in missing for n in names):
            raise IncompleteResponse(operation=self.get_operation, detail="parameters missing")
        out = Fetched(request_id=request_id(resp))
        for name in missing:
            out.errors[name] = ("ParameterNotFound", "")
        for name in names:
            if name not in params:
                continue
            text = str(params[name]["Value"])
            try:
                out.values[name] = base64.b64decode("".join(text.split()), validate=True)
            except (binascii.Error, ValueError):
                out.bad[name] = "is not base64 text"
        return out

    def delete(self, client: Client, names: Sequence[str]) -> dict[str, str]:
        resp = client.delete_parameters(Names=list(names))
        out = {str(n): DELETED for n in resp.get("DeletedParameters", [])}
        out.update({str(n): ALREADY_GONE for n in resp.get("InvalidParameters", [])})
        return out

    _create_method = "put_parameter"
    _key_field = "KeyId"

    def _value_fields(self, value: bytes, tier: str) -> dict[str, Any]:
        return {
            "Value": value.decode("ascii"),
            "Type": "SecureString",
            "Tier": "Advanced" if tier == "advanced" else "Standard",
        }

    def list_fragments(
        self, client: Client, root: str, *, tag_key: str | None = None, page_size: int = 50
    ) -> Iterator[Listed]:
        # DescribeParameters carries no tags and cannot filter by tag key: tags() per name.
        pages = client.get_paginator("describe_parameters").paginate(
            ParameterFilters=[{"Key": "Path", "Option": "Recursive", "Values": [root.rstrip("/")]}],
            PaginationConfig={"PageSize": page_size},
        )
        for page in pages:
            for item in page.get("Parameters", []):
                yield Listed(item["Name"], None, _when(item.get("LastModifiedDate")))

    def tag(self, client: Client, name: str, tags: Mapping[str, str]) -> None:
        client.add_tags_to_resource(
            ResourceType="Parameter",
            ResourceId=name,
            Tags=_aws_tags(tags),
        )

    def tags(self, client: Client, name: str) -> dict[str, str] | None:
        try:
            resp = client.list_tags_for_resource(ResourceType="Parameter", ResourceId=name)
        except ClientError as exc:
            if error_code(exc) in NOT_FOUND:  # InvalidResourceId: deleted since it was listed
                return None
            raise
        return _tag_map(resp.get("TagList"))

    def probe(self, client: Client, names: Sequence[str]) -> list[Probed]:
        # GetParameters without decryption, which the node policy grants: only the name and
        # type are kept; a SecureString's value comes back encrypted and is never looked at.
        resp = client.get_parameters(Names=list(names), WithDecryption=False)
        kinds = {p.get("Name"): str(p.get("Type")) for p in resp.get("Parameters", [])}
        missing = set(resp.get("InvalidParameters", []))
        rid = request_id(resp)
        del resp
        out = []
        for name in names:
            kind = kinds.get(name)
            if name in missing:
                out.append(Probed(name, MISSING, "", rid))
            elif kind == "SecureString":
                out.append(Probed(name, PRESENT, kind, rid))
            elif kind is not None:
                out.append(Probed(name, PLAINTEXT, kind, rid))
            else:
                out.append(Probed(name, UNANSWERED, "", rid))
        return out


STORES: dict[str, Store] = {s.backend: s for s in (SecretsManagerStore(), SsmStore())}
