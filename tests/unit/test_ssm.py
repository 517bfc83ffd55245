"""Unit tests of fetching from SSM Parameter Store, with botocore's Stubber as the network."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from botocore.stub import Stubber

from sealboot_agent.errors import AccessDenied, FragmentMissing, IntegrityError, ServiceError
from sealboot_agent.fetch import fetch_fragments
from sealboot_agent.imds import Deadline
from sealboot_agent.retry import RetryPolicy
from sealboot_agent.stores import STORES
from sealboot_agent.wire import BACKEND_SSM
from tests.unit.fakes import FakeClock

SSM = STORES[BACKEND_SSM]
NAMES = [f"/cluster.x-k8s.io/0b8f/{i}" for i in range(12)]


def value(i: int) -> bytes:
    return bytes([i]) * 6  # 6 bytes: 8 base64 characters, no padding


def answer(names: list[str]) -> dict[str, Any]:
    return {
        "Parameters": [
            {"Name": n, "Value": base64.b64encode(value(NAMES.index(n))).decode()} for n in names
        ]
    }


def test_values_come_back_decoded_in_manifest_order(
    ssm: tuple[Any, Stubber], policy: RetryPolicy
) -> None:
    client, stub = ssm
    stub.add_response(
        "get_parameters", answer(NAMES[:3][::-1]), {"Names": NAMES[:3], "WithDecryption": True}
    )
    assert fetch_fragments(SSM, client, NAMES[:3], policy) == [value(i) for i in range(3)]


def test_names_go_in_batches_of_ten(ssm: tuple[Any, Stubber], policy: RetryPolicy) -> None:
    client, stub = ssm
    stub.add_response(
        "get_parameters", answer(NAMES[:10]), {"Names": NAMES[:10], "WithDecryption": True}
    )
    stub.add_response(
        "get_parameters", answer(NAMES[10:]), {"Names": NAMES[10:], "WithDecryption": True}
    )
    assert len(fetch_fragments(SSM, client, NAMES, policy)) == 12


def test_a_missing_parameter_is_fragment_missing(
    ssm: tuple[Any, Stubber], policy: RetryPolicy
) -> None:
    client, stub = ssm
    stub.add_response("get_parameters", {**answer(NAMES[:1]), "InvalidParameters": [NAMES[1]]})
    with pytest.raises(FragmentMissing) as info:
        fetch_fragments(SSM, client, NAMES[:2], policy)
    assert info.value.fragment == NAMES[1]


@pytest.mark.parametrize(
    ("code", "grant"),
    [
        ("AccessDeniedException", "ssm:GetParameters and ssm:DeleteParameters"),
        ("InvalidKeyId", "kms:Decrypt"),  # the key was deleted or this role may not use it
    ],
)
def test_a_refusal_names_what_to_grant(
    ssm: tuple[Any, Stubber], policy: RetryPolicy, code: str, grant: str
) -> None:
    client, stub = ssm
    stub.add_client_error("get_parameters", code)
    with pytest.raises(AccessDenied) as info:
        fetch_fragments(SSM, client, NAMES[:2], policy)
    assert grant in info.value.advice


def test_a_value_that_is_not_base64_is_an_integrity_error(
    ssm: tuple[Any, Stubber], policy: RetryPolicy
) -> None:
    client, stub = ssm
    stub.add_response("get_parameters", {"Parameters": [{"Name": NAMES[0], "Value": "%%%"}]})
    with pytest.raises(IntegrityError) as info:
        fetch_fragments(SSM, client, NAMES[:1], policy)
    assert info.value.fragment == NAMES[0]
    assert "%%%" not in info.value.message


def test_throttling_is_retried_with_the_injected_sleep(
    ssm: tuple[Any, Stubber], policy: RetryPolicy, clock: FakeClock
) -> None:
    client, stub = ssm
    stub.add_client_error("get_parameters", "ThrottlingException")
    stub.add_response("get_parameters", answer(NAMES[:1]))
    assert fetch_fragments(SSM, client, NAMES[:1], policy) == [value(0)]
    assert len(clock.sleeps) == 1


def test_a_cut_answer_is_retried_then_a_service_error(clock: FakeClock) -> None:
    calls: list[list[str]] = []

    class Cut:
        def get_parameters(self, Names: list[str], WithDecryption: bool) -> dict[str, Any]:  # noqa: N803
            calls.append(Names)
            return {"Parameters": []}  # neither a value nor "invalid": the body was cut

    short = RetryPolicy(Deadline(0.5, clock, clock.sleep))
    with pytest.raises(ServiceError):
        fetch_fragments(SSM, Cut(), NAMES[:1], short)
    assert len(calls) > 1
