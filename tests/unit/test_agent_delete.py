"""Unit tests of the agent's fragment deletion, with botocore's Stubber in place of the network."""

from __future__ import annotations

from typing import Any

from botocore.stub import Stubber

from sealboot_agent.delete import delete_fragments
from sealboot_agent.imds import Deadline
from sealboot_agent.retry import RetryPolicy
from sealboot_agent.stores import STORES
from sealboot_agent.wire import BACKEND_SECRETS_MANAGER, BACKEND_SSM
from tests.unit.fakes import FakeClock

SM = STORES[BACKEND_SECRETS_MANAGER]
SSM = STORES[BACKEND_SSM]
NAMES = [f"aws.cluster.x-k8s.io/ns/c/m/Tok-{i}" for i in range(3)]
PARAMS = [f"/cluster.x-k8s.io/ns/c/m/Tok/{i}" for i in range(12)]


def test_one_secret_is_deleted_without_recovery(
    sm: tuple[Any, Stubber], policy: RetryPolicy
) -> None:
    client, stub = sm
    stub.add_response(
        "delete_secret", {}, {"SecretId": NAMES[0], "ForceDeleteWithoutRecovery": True}
    )
    assert delete_fragments(SM, client, NAMES[:1], policy) == {}


def test_an_already_gone_secret_is_not_left_behind(
    sm: tuple[Any, Stubber], policy: RetryPolicy
) -> None:
    client, stub = sm
    stub.add_client_error("delete_secret", "ResourceNotFoundException")
    assert delete_fragments(SM, client, NAMES[:1], policy) == {}


def test_a_denied_delete_is_reported_with_its_request_id(
    sm: tuple[Any, Stubber], policy: RetryPolicy
) -> None:
    client, stub = sm
    stub.add_client_error(
        "delete_secret",
        "AccessDeniedException",
        response_meta={"RequestId": "rid-9"},
    )
    left = delete_fragments(SM, client, NAMES[:1], policy)
    assert left == {NAMES[0]: "AccessDeniedException (request id rid-9)"}


def test_a_throttled_delete_is_retried_with_the_injected_sleep(
    sm: tuple[Any, Stubber], policy: RetryPolicy, clock: FakeClock
) -> None:
    client, stub = sm
    stub.add_client_error("delete_secret", "ThrottlingException")
    stub.add_response("delete_secret", {})
    assert delete_fragments(SM, client, NAMES[:1], policy) == {}
    assert len(clock.sleeps) == 1


def test_a_delete_failing_until_the_deadline_says_it_gave_up(
    sm: tuple[Any, Stubber], clock: FakeClock
) -> None:
    client, stub = sm
    short = RetryPolicy(Deadline(0.0, clock, clock.sleep))
    left = delete_fragments(SM, client, NAMES[:1], short)
    assert "deadline had passed" in left[NAMES[0]]


def test_every_secret_gets_its_own_delete(policy: RetryPolicy) -> None:
    seen: list[str] = []

    class Recorder:
        def delete_secret(self, SecretId: str, ForceDeleteWithoutRecovery: bool) -> dict[str, Any]:  # noqa: N803
            seen.append(SecretId)
            return {}

    assert delete_fragments(SM, Recorder(), NAMES, policy) == {}
    assert sorted(seen) == sorted(NAMES)


def test_parameters_go_in_batches_of_ten(ssm: tuple[Any, Stubber], policy: RetryPolicy) -> None:
    client, stub = ssm
    stub.add_response(
        "delete_parameters", {"DeletedParameters": PARAMS[:10]}, {"Names": PARAMS[:10]}
    )
    stub.add_response(
        "delete_parameters",
        {"DeletedParameters": PARAMS[10:11], "InvalidParameters": PARAMS[11:]},
        {"Names": PARAMS[10:]},
    )
    assert delete_fragments(SSM, client, PARAMS, policy) == {}


def test_a_failed_parameter_batch_leaves_each_of_its_names(
    ssm: tuple[Any, Stubber], policy: RetryPolicy
) -> None:
    client, stub = ssm
    stub.add_client_error("delete_parameters", "AccessDeniedException")
    left = delete_fragments(SSM, client, PARAMS[:3], policy)
    assert sorted(left) == PARAMS[:3]
    assert set(left.values()) == {"AccessDeniedException"}
