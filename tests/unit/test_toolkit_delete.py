"""Unit tests of the toolkit's one deletion (delete, sweep, seal's undo), with botocore's Stubber
in place of the network."""

from __future__ import annotations

import pytest
from botocore.stub import Stubber

from sealboot.delete import delete, delete_fragments
from sealboot.errors import AccessDenied, AwsError
from sealboot_agent.stores import STORES
from sealboot_agent.wire import Manifest
from tests.unit.fakes import stubbed

SM = STORES["secrets-manager"]
SSM = STORES["ssm"]
TOKEN = "a" * 52
NAMES = [f"aws.cluster.x-k8s.io/ns/c1/m0/{TOKEN}-{i}" for i in range(3)]
PARAMS = [f"/cluster.x-k8s.io/ns/c1/m0/{TOKEN}/{i}" for i in range(12)]
LABELS = {"namespace": "ns", "cluster": "c1", "machine": "m0"}


def _manifest(backend: str, names: list[str]) -> Manifest:
    return Manifest(backend=backend, format="native", fragments=tuple(names), sha256="0" * 64,
                    region="eu-west-1", labels=LABELS)  # fmt: skip


def _delete_secret(stub: Stubber, name: str) -> None:
    stub.add_response("delete_secret", {}, {"SecretId": name, "ForceDeleteWithoutRecovery": True})


def test_each_secret_is_force_deleted_and_named_as_gone() -> None:
    with stubbed("secretsmanager") as (client, stub):
        for name in NAMES:
            _delete_secret(stub, name)
        assert delete(_manifest("secrets-manager", NAMES), client=client) == NAMES


def test_a_secret_already_gone_counts_as_gone() -> None:
    with stubbed("secretsmanager") as (client, stub):
        stub.add_client_error("delete_secret", "ResourceNotFoundException", http_status_code=400)
        result = delete_fragments(SM, client, NAMES[:1])
    assert (result.deleted, result.already_gone, result.failed) == ([], NAMES[:1], {})


def test_one_denied_secret_does_not_keep_the_others() -> None:
    with stubbed("secretsmanager") as (client, stub):
        _delete_secret(stub, NAMES[0])
        stub.add_client_error("delete_secret", "AccessDeniedException", http_status_code=400)
        _delete_secret(stub, NAMES[2])
        result = delete_fragments(SM, client, NAMES)
    assert result.deleted == [NAMES[0], NAMES[2]]
    assert list(result.failed) == [NAMES[1]]
    assert isinstance(result.failed[NAMES[1]], AccessDenied)


def test_a_failed_delete_raises_and_says_what_is_left() -> None:
    with stubbed("secretsmanager") as (client, stub):
        _delete_secret(stub, NAMES[0])
        stub.add_client_error("delete_secret", "InternalServiceError", http_status_code=500)
        _delete_secret(stub, NAMES[2])
        with pytest.raises(AwsError) as info:
            delete(_manifest("secrets-manager", NAMES), client=client)
    assert type(info.value) is AwsError
    assert f"deleting {NAMES[1]}: InternalServiceError" in info.value.message
    assert info.value.outcome == (
        f"2 of 3 fragment(s) are gone, 1 left ({NAMES[1]}); "
        "run the same 'sealboot delete' again once fixed"
    )


def test_nothing_deleted_says_so() -> None:
    with stubbed("secretsmanager") as (client, stub):
        stub.add_client_error("delete_secret", "AccessDeniedException", http_status_code=400)
        with pytest.raises(AccessDenied) as info:
            delete(_manifest("secrets-manager", NAMES[:1]), client=client)
    assert info.value.outcome is not None
    assert info.value.outcome.startswith("nothing was deleted: all 1 fragment(s) are still there")


def test_parameters_are_deleted_in_batches_of_ten() -> None:
    with stubbed("ssm") as (client, stub):
        stub.add_response("delete_parameters", {"DeletedParameters": PARAMS[:10]},
                          {"Names": PARAMS[:10]})  # fmt: skip
        stub.add_response("delete_parameters", {"InvalidParameters": PARAMS[10:]},
                          {"Names": PARAMS[10:]})  # fmt: skip
        result = delete_fragments(SSM, client, PARAMS)
    assert result.deleted == PARAMS[:10]
    assert result.already_gone == PARAMS[10:], "InvalidParameters: already gone"
    assert result.failed == {}


def test_a_parameter_the_answer_does_not_name_is_a_failure() -> None:
    with stubbed("ssm") as (client, stub):
        stub.add_response("delete_parameters", {"DeletedParameters": PARAMS[:1]},
                          {"Names": PARAMS[:2]})  # fmt: skip
        with pytest.raises(AwsError, match="AWS did not report it") as info:
            delete(_manifest("ssm", PARAMS[:2]), client=client)
    assert PARAMS[1] in info.value.message
    assert info.value.outcome is not None
    assert info.value.outcome.startswith("1 of 2 fragment(s) are gone, 1 left")


def test_a_failed_batch_fails_every_name_in_it() -> None:
    with stubbed("ssm") as (client, stub):
        stub.add_client_error("delete_parameters", "AccessDeniedException", http_status_code=400)
        result = delete_fragments(SSM, client, PARAMS[:3])
    assert list(result.failed) == PARAMS[:3]
    assert all(isinstance(err, AccessDenied) for err in result.failed.values())


def test_progress_counts_every_name_once() -> None:
    seen: list[int] = []
    with stubbed("ssm") as (client, stub):
        stub.add_response("delete_parameters", {"DeletedParameters": PARAMS[:10]})
        stub.add_response("delete_parameters", {"DeletedParameters": PARAMS[10:]})
        delete_fragments(SSM, client, PARAMS, progress=seen.append)
    assert seen == [10, 2]
