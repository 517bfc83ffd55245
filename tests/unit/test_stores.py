"""Unit tests of the fragment stores, with botocore's Stubber in place of the network."""

from __future__ import annotations

import base64
import datetime
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from sealboot_agent.stores import (
    ALREADY_GONE,
    DELETED,
    DELETING,
    MISSING,
    PLAINTEXT,
    PRESENT,
    STORES,
    UNANSWERED,
    IncompleteResponse,
    Listed,
    error_code,
    http_status,
    is_denied,
    request_id,
)
from sealboot_agent.wire import (
    BACKEND_SECRETS_MANAGER,
    BACKEND_SSM,
    BACKENDS,
    CAPA_FRAGMENT_SIZE,
    CAPA_SSM_FRAGMENT_SIZE,
    FORMAT_CAPA,
    FORMAT_NATIVE,
    SSM_ADVANCED_MAX,
)

SM = STORES[BACKEND_SECRETS_MANAGER]
SSM = STORES[BACKEND_SSM]
N1 = "aws.cluster.x-k8s.io/ns/c/m/Tok-0"
N2 = "aws.cluster.x-k8s.io/ns/c/m/Tok-1"
P1 = "/cluster.x-k8s.io/ns/c/m/Tok/0"
P2 = "/cluster.x-k8s.io/ns/c/m/Tok/1"
WHEN = datetime.datetime(2026, 1, 2, tzinfo=datetime.timezone.utc)


def _error(code: str, status: int = 400) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "Op",
    )


# --- the registry and the error table -------------------------------------------------------


def test_every_wire_backend_has_a_store_named_by_it() -> None:
    assert sorted(STORES) == sorted(BACKENDS)
    assert all(STORES[b].backend == b for b in BACKENDS)


def test_each_store_names_its_botocore_service() -> None:
    assert (SM.service, SSM.service) == ("secretsmanager", "ssm")


def test_a_bare_403_is_a_denial() -> None:
    assert is_denied("", 403)


def test_a_kms_refusal_with_403_is_not_a_plain_denial() -> None:
    assert not is_denied("KMSAccessDeniedException", 403)


def test_error_code_and_status_come_from_the_answer() -> None:
    exc = _error("ThrottlingException", 400)
    assert (error_code(exc), http_status(exc)) == ("ThrottlingException", 400)


def test_request_id_is_empty_without_metadata() -> None:
    assert request_id({}) == ""


# --- Secrets Manager --------------------------------------------------------------------------


def test_sm_get_returns_binary_values_by_name(sm: tuple[Any, Stubber]) -> None:
    client, stub = sm
    stub.add_response(
        "batch_get_secret_value",
        {
            "SecretValues": [
                {"Name": N1, "SecretBinary": b"a"},
                {"Name": N2, "SecretBinary": b"b"},
            ],
            "Errors": [],
        },
        {"SecretIdList": [N1, N2]},
    )
    assert SM.get(client, [N1, N2]).values == {N1: b"a", N2: b"b"}


def test_sm_get_reports_per_secret_errors(sm: tuple[Any, Stubber]) -> None:
    client, stub = sm
    stub.add_response(
        "batch_get_secret_value",
        {
            "SecretValues": [{"Name": N1, "SecretBinary": b"a"}],
            "Errors": [{"SecretId": N2, "ErrorCode": "ResourceNotFoundException", "Message": "x"}],
        },
    )
    assert SM.get(client, [N1, N2]).errors == {N2: ("ResourceNotFoundException", "x")}


def test_sm_get_refuses_a_string_secret_without_its_value(sm: tuple[Any, Stubber]) -> None:
    client, stub = sm
    stub.add_response(
        "batch_get_secret_value", {"SecretValues": [{"Name": N1, "SecretString": "hush"}]}
    )
    got = SM.get(client, [N1])
    assert N1 in got.bad
    assert "hush" not in got.bad[N1]


def test_sm_get_of_a_cut_answer_raises_incomplete(sm: tuple[Any, Stubber]) -> None:
    client, stub = sm
    stub.add_response(
        "batch_get_secret_value", {"SecretValues": [{"Name": N1, "SecretBinary": b"a"}]}
    )
    with pytest.raises(IncompleteResponse):
        SM.get(client, [N1, N2])


def test_sm_get_one_uses_get_secret_value(sm: tuple[Any, Stubber]) -> None:
    client, stub = sm
    stub.add_response("get_secret_value", {"Name": N1, "SecretBinary": b"z"}, {"SecretId": N1})
    assert SM.get_one(client, N1).values == {N1: b"z"}


def test_sm_batch_is_unavailable_when_denied_or_unknown() -> None:
    assert SM.batch_unavailable("AccessDeniedException")
    assert SM.batch_unavailable("UnknownOperationException")
    assert not SM.batch_unavailable("ThrottlingException")


def test_sm_delete_forces_deletion_without_recovery(sm: tuple[Any, Stubber]) -> None:
    client, stub = sm
    stub.add_response(
        "delete_secret", {"Name": N1}, {"SecretId": N1, "ForceDeleteWithoutRecovery": True}
    )
    assert SM.delete(client, [N1]) == {N1: DELETED}


def test_sm_delete_of_a_missing_secret_is_already_gone(sm: tuple[Any, Stubber]) -> None:
    client, stub = sm
    stub.add_client_error("delete_secret", "ResourceNotFoundException")
    assert SM.delete(client, [N1]) == {N1: ALREADY_GONE}


def test_sm_delete_raises_other_errors(sm: tuple[Any, Stubber]) -> None:
    client, stub = sm
    stub.add_client_error("delete_secret", "AccessDeniedException")
    with pytest.raises(ClientError) as info:
        SM.delete(client, [N1])
    assert error_code(info.value) == "AccessDeniedException"


def test_sm_create_passes_binary_key_and_tags(sm: tuple[Any, Stubber]) -> None:
    client, stub = sm
    stub.add_response(
        "create_secret",
        {"Name": N1},
        {
            "Name": N1,
            "SecretBinary": b"v",
            "Description": "d",
            "Tags": [{"Key": "k", "Value": "v"}],
            "KmsKeyId": "alias/x",
        },
    )
    SM.create(client, N1, b"v", tags={"k": "v"}, description="d", kms_key_id="alias/x")


def test_sm_list_pages_through_and_carries_tags(sm: tuple[Any, Stubber]) -> None:
    client, stub = sm
    want = {
        "Filters": [
            {"Key": "name", "Values": ["aws.cluster.x-k8s.io/"]},
            {"Key": "tag-key", "Values": ["t"]},
        ],
        "MaxResults": 100,
    }
    stub.add_response(
        "list_secrets",
        {"SecretList": [{"Name": N1, "Tags": [{"Key": "t", "Value": "1"}]}], "NextToken": "n"},
        want,
    )
    stub.add_response(
        "list_secrets",
        {"SecretList": [{"Name": N2, "CreatedDate": WHEN}]},
        {**want, "NextToken": "n"},
    )
    got = list(SM.list_fragments(client, "aws.cluster.x-k8s.io", tag_key="t"))
    assert got == [Listed(N1, {"t": "1"}, None), Listed(N2, {}, WHEN)]


def test_sm_probe_says_scheduled_for_deletion(sm: tuple[Any, Stubber]) -> None:
    client, stub = sm
    stub.add_response("describe_secret", {"Name": N1, "DeletedDate": WHEN})
    assert SM.probe(client, [N1])[0].state == DELETING


def test_sm_probe_of_a_missing_secret(sm: tuple[Any, Stubber]) -> None:
    client, stub = sm
    stub.add_client_error("describe_secret", "ResourceNotFoundException")
    assert [p.state for p in SM.probe(client, [N1])] == [MISSING]


def test_sm_encode_capa_slices_at_capa_size() -> None:
    stream = bytes(CAPA_FRAGMENT_SIZE + 1)
    assert [len(v) for v in SM.encode(stream, FORMAT_CAPA)] == [CAPA_FRAGMENT_SIZE, 1]


# --- SSM --------------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_ssm_get_decrypts_and_decodes(ssm: tuple[Any, Stubber]) -> None:
    client, stub = ssm
    stub.add_response(
        "get_parameters",
        {"Parameters": [{"Name": P1, "Value": _b64(b"gz")}]},
        {"Names": [P1], "WithDecryption": True},
    )
    assert SSM.get(client, [P1]).values == {P1: b"gz"}


def test_ssm_get_reports_missing_names_as_not_found(ssm: tuple[Any, Stubber]) -> None:
    client, stub = ssm
    stub.add_response(
        "get_parameters",
        {"Parameters": [{"Name": P1, "Value": _b64(b"a")}], "InvalidParameters": [P2]},
    )
    assert SSM.get(client, [P1, P2]).errors == {P2: ("ParameterNotFound", "")}


def test_ssm_get_marks_non_base64_values_bad(ssm: tuple[Any, Stubber]) -> None:
    client, stub = ssm
    stub.add_response("get_parameters", {"Parameters": [{"Name": P1, "Value": "not base64!"}]})
    assert SSM.get(client, [P1]).bad == {P1: "is not base64 text"}


def test_ssm_get_of_a_cut_answer_raises_incomplete(ssm: tuple[Any, Stubber]) -> None:
    client, stub = ssm
    stub.add_response("get_parameters", {"Parameters": []})
    with pytest.raises(IncompleteResponse):
        SSM.get(client, [P1])


def test_ssm_delete_reports_deleted_and_already_gone(ssm: tuple[Any, Stubber]) -> None:
    client, stub = ssm
    stub.add_response(
        "delete_parameters",
        {"DeletedParameters": [P1], "InvalidParameters": [P2]},
        {"Names": [P1, P2]},
    )
    assert SSM.delete(client, [P1, P2]) == {P1: DELETED, P2: ALREADY_GONE}


def test_ssm_create_writes_a_secure_string(ssm: tuple[Any, Stubber]) -> None:
    client, stub = ssm
    stub.add_response(
        "put_parameter",
        {"Version": 1},
        {
            "Name": P1,
            "Value": "QUJD",
            "Type": "SecureString",
            "Tier": "Advanced",
            "Description": "d",
            "Tags": [{"Key": "k", "Value": "v"}],
            "KeyId": "alias/x",
        },
    )
    SSM.create(
        client, P1, b"QUJD", tags={"k": "v"}, description="d", kms_key_id="alias/x", tier="advanced"
    )


def test_ssm_list_walks_the_root_recursively(ssm: tuple[Any, Stubber]) -> None:
    client, stub = ssm
    stub.add_response(
        "describe_parameters",
        {"Parameters": [{"Name": P1, "LastModifiedDate": WHEN}]},
        {
            "ParameterFilters": [
                {"Key": "Path", "Option": "Recursive", "Values": ["/cluster.x-k8s.io"]}
            ],
            "MaxResults": 50,
        },
    )
    assert list(SSM.list_fragments(client, "/cluster.x-k8s.io/")) == [Listed(P1, None, WHEN)]


def test_ssm_tags_of_a_deleted_parameter_is_none(ssm: tuple[Any, Stubber]) -> None:
    client, stub = ssm
    stub.add_client_error("list_tags_for_resource", "InvalidResourceId")
    assert SSM.tags(client, P1) is None


def test_ssm_probe_never_asks_for_decryption(ssm: tuple[Any, Stubber]) -> None:
    client, stub = ssm
    stub.add_response(
        "get_parameters",
        {
            "Parameters": [
                {"Name": P1, "Type": "SecureString", "Value": "AQID"},
                {"Name": P2, "Type": "String", "Value": "plain"},
            ],
            "InvalidParameters": ["/x"],
        },
        {"Names": [P1, P2, "/x", "/y"], "WithDecryption": False},
    )
    got = SSM.probe(client, [P1, P2, "/x", "/y"])
    assert [p.state for p in got] == [PRESENT, PLAINTEXT, MISSING, UNANSWERED]
    assert all("AQID" not in p.detail and "plain" not in p.detail for p in got)


def test_ssm_encode_native_advanced_keeps_4_char_boundaries() -> None:
    values = SSM.encode(bytes(SSM_ADVANCED_MAX), FORMAT_NATIVE, tier="advanced")
    assert all(len(v) % 4 == 0 for v in values[:-1])
    assert b"".join(base64.b64decode(v) for v in values) == bytes(SSM_ADVANCED_MAX)


def test_ssm_encode_capa_uses_capa_slices() -> None:
    values = SSM.encode(bytes(4000), FORMAT_CAPA)
    assert len(values[0]) == CAPA_SSM_FRAGMENT_SIZE


def test_stores_imports_only_stdlib_botocore_and_wire() -> None:
    import ast
    import sys

    import sealboot_agent.stores as mod

    tree = ast.parse(Path(mod.__file__).read_text(encoding="utf-8"))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            roots.add(node.module)
    outside = {
        m
        for m in roots
        if m.split(".")[0] not in sys.stdlib_module_names
        and m.split(".")[0] != "botocore"
        and m not in ("sealboot_agent.wire",)
    }
    assert outside == set()
