"""Unit tests of fragment fetching against a fake Secrets Manager client."""

from __future__ import annotations

import os

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from sealboot_agent.errors import (
    AccessDenied,
    AgentError,
    FragmentMissing,
    IntegrityError,
    ServiceError,
)
from sealboot_agent.fetch import error_for, fetch_fragments
from sealboot_agent.imds import Deadline
from sealboot_agent.retry import RetryPolicy
from sealboot_agent.stores import STORES
from sealboot_agent.wire import BACKEND_SECRETS_MANAGER
from tests.unit.fakes import FakeClock, FakeSecrets, client_error

SM = STORES[BACKEND_SECRETS_MANAGER]


def stocked(count: int) -> tuple[FakeSecrets, list[str], list[bytes]]:
    fake = FakeSecrets()
    names = [f"aws.cluster.x-k8s.io/ns/c/m/tok-{i}" for i in range(count)]
    values = [os.urandom(16) + bytes([i % 256]) for i in range(count)]
    fake.store.update(zip(names, values))
    return fake, names, values


def http_403() -> ClientError:
    return ClientError(
        {
            "Error": {"Code": "403", "Message": "Forbidden"},
            "ResponseMetadata": {"RequestId": "r403", "HTTPStatusCode": 403},
        },
        "GetSecretValue",
    )


# --- the batch path ------------------------------------------------------------------------


def test_batch_returns_values_in_manifest_order(policy: RetryPolicy) -> None:
    fake, names, values = stocked(5)
    assert fetch_fragments(SM, fake, names, policy) == values
    assert [op for op, _ in fake.calls] == ["batch_get_secret_value"]


def test_batch_groups_hold_at_most_20_ids_and_cover_every_name(policy: RetryPolicy) -> None:
    fake, names, values = stocked(45)
    assert fetch_fragments(SM, fake, names, policy) == values
    batches = [c["SecretIdList"] for c in fake.ops("batch_get_secret_value")]
    assert [len(b) for b in batches] == [20, 20, 5]
    assert [n for b in batches for n in b] == names
    assert fake.ops("get_secret_value") == []


def test_exactly_20_is_one_batch(policy: RetryPolicy) -> None:
    fake, names, values = stocked(20)
    assert fetch_fragments(SM, fake, names, policy) == values
    assert len(fake.ops("batch_get_secret_value")) == 1


def test_batch_error_entry_not_found_names_the_fragment(policy: RetryPolicy) -> None:
    fake, names, _ = stocked(3)
    del fake.store[names[1]]
    with pytest.raises(FragmentMissing) as info:
        fetch_fragments(SM, fake, names, policy)
    assert info.value.fragment == names[1]
    assert names[1] in info.value.message
    assert "ResourceNotFoundException" in info.value.message
    assert info.value.exit_code == 4
    assert fake.ops("delete_secret") == []


def test_batch_error_entry_decryption_failure_is_access_denied(policy: RetryPolicy) -> None:
    fake, names, _ = stocked(2)
    fake.batch_errors_entries = [
        {"SecretId": names[0], "ErrorCode": "DecryptionFailure", "Message": "kms says no"}
    ]
    with pytest.raises(AccessDenied) as info:
        fetch_fragments(SM, fake, names, policy)
    assert info.value.fragment == names[0]
    assert "kms:Decrypt" in info.value.advice


def test_batch_error_entry_throttled_is_fetched_again_alone(policy: RetryPolicy) -> None:
    fake, names, values = stocked(3)
    # The batch answers with the value *and* a throttling entry for names[2]: a value that
    # the batch reported as failed must still come back correct, via GetSecretValue.
    real_batch = fake.batch_get_secret_value

    def batch(**kwargs: object) -> dict[str, object]:
        resp = real_batch(**kwargs)
        resp["SecretValues"] = [v for v in resp["SecretValues"] if v["Name"] != names[2]]
        resp["Errors"] = [
            {"SecretId": names[2], "ErrorCode": "ThrottlingException", "Message": "slow down"}
        ]
        return resp

    fake.batch_get_secret_value = batch  # type: ignore[method-assign]
    assert fetch_fragments(SM, fake, names, policy) == values
    assert [c["SecretId"] for c in fake.ops("get_secret_value")] == [names[2]]


@pytest.mark.parametrize("code", ["AccessDeniedException", "UnknownOperationException"])
def test_batch_denied_or_unsupported_falls_back_to_get_secret_value(
    code: str, policy: RetryPolicy
) -> None:
    fake, names, values = stocked(25)
    fake.batch_error = client_error(code, "no batch for you", "BatchGetSecretValue")
    assert fetch_fragments(SM, fake, names, policy) == values
    gets = [c["SecretId"] for c in fake.ops("get_secret_value")]
    assert sorted(gets) == sorted(names)
    assert len(fake.ops("batch_get_secret_value")) == 1


def test_use_batch_false_never_calls_batch(policy: RetryPolicy) -> None:
    fake, names, values = stocked(3)
    assert fetch_fragments(SM, fake, names, policy, use_batch=False) == values
    assert fake.ops("batch_get_secret_value") == []


def test_final_batch_client_error_is_reported_without_fallback(policy: RetryPolicy) -> None:
    fake, names, _ = stocked(2)
    fake.batch_error = client_error("ValidationException", "bad ids", "BatchGetSecretValue")
    with pytest.raises(AgentError) as info:
        fetch_fragments(SM, fake, names, policy)
    assert "ValidationException" in info.value.message
    assert fake.ops("get_secret_value") == []
    assert len(fake.ops("batch_get_secret_value")) == 1


def test_batch_failing_until_the_deadline_is_a_service_error(
    policy: RetryPolicy, clock: FakeClock
) -> None:
    fake, names, _ = stocked(2)
    fake.batch_error = client_error("InternalServiceError", "boom", "BatchGetSecretValue")
    with pytest.raises(ServiceError) as info:
        fetch_fragments(SM, fake, names, policy)
    assert "InternalServiceError" in info.value.message
    assert len(fake.ops("batch_get_secret_value")) > 1
    assert clock.now - 1000.0 <= 30.0
    assert fake.ops("get_secret_value") == []


def test_network_error_on_batch_is_a_service_error(policy: RetryPolicy) -> None:
    fake, names, _ = stocked(2)
    fake.batch_error = EndpointConnectionError(endpoint_url="http://127.0.0.1:9")
    with pytest.raises(ServiceError):
        fetch_fragments(SM, fake, names, policy)


# --- the GetSecretValue path ---------------------------------------------------------------


def test_get_secret_value_denied_is_access_denied_naming_the_fragment(
    policy: RetryPolicy,
) -> None:
    fake, names, _ = stocked(3)
    fake.batch_error = client_error("AccessDeniedException")
    fake.get_errors[names[2]] = client_error(
        "AccessDeniedException", "not authorized", "GetSecretValue", "req-77"
    )
    with pytest.raises(AccessDenied) as info:
        fetch_fragments(SM, fake, names, policy)
    err = info.value
    assert err.exit_code == 5
    assert err.fragment == names[2]
    assert names[2] in err.message
    assert "req-77" in err.message
    assert fake.ops("delete_secret") == []


def test_bare_http_403_counts_as_access_denied(policy: RetryPolicy) -> None:
    fake, names, _ = stocked(1)
    fake.get_errors[names[0]] = http_403()
    with pytest.raises(AccessDenied) as info:
        fetch_fragments(SM, fake, names, policy, use_batch=False)
    assert info.value.fragment == names[0]


def test_access_denied_is_retried_inside_the_boot_window(clock: FakeClock) -> None:
    fake, names, values = stocked(1)
    fake.get_failures[names[0]] = [client_error("AccessDeniedException")] * 3
    window = RetryPolicy(Deadline(30.0, clock, clock.sleep), denied_until=clock() + 20.0)
    assert fetch_fragments(SM, fake, names, window, use_batch=False) == values
    assert len(fake.ops("get_secret_value")) == 4


def test_get_secret_value_missing_is_fragment_missing(policy: RetryPolicy) -> None:
    fake, names, _ = stocked(2)
    del fake.store[names[0]]
    with pytest.raises(FragmentMissing) as info:
        fetch_fragments(SM, fake, names, policy, use_batch=False)
    assert info.value.fragment == names[0]


def test_throttled_get_is_retried_with_the_injected_sleep(
    policy: RetryPolicy, clock: FakeClock
) -> None:
    fake, names, values = stocked(2)
    fake.get_failures[names[1]] = [client_error("ThrottlingException")] * 4
    assert fetch_fragments(SM, fake, names, policy, use_batch=False) == values
    gets = [c["SecretId"] for c in fake.ops("get_secret_value")]
    assert gets.count(names[1]) == 5
    assert len(clock.sleeps) == 4


def test_throttled_past_the_deadline_names_the_fragment(
    policy: RetryPolicy, clock: FakeClock
) -> None:
    fake, names, _ = stocked(2)
    fake.get_errors[names[0]] = client_error("ThrottlingException", "rate", "GetSecretValue")
    with pytest.raises(ServiceError) as info:
        fetch_fragments(SM, fake, names, policy, use_batch=False)
    assert info.value.fragment == names[0]
    assert "ThrottlingException" in info.value.message
    assert clock.now - 1000.0 <= 30.0


def test_secret_string_instead_of_binary_is_an_integrity_error(policy: RetryPolicy) -> None:
    fake, names, _ = stocked(2)
    fake.store[names[1]] = "H4sIAAAAAAAA"  # text, as a hand-made secret would be
    with pytest.raises(IntegrityError) as info:
        fetch_fragments(SM, fake, names, policy)
    assert info.value.fragment == names[1]
    assert "SecretBinary" in info.value.message
    with pytest.raises(IntegrityError):
        fetch_fragments(SM, fake, names, policy, use_batch=False)


def test_network_error_on_get_names_the_fragment(policy: RetryPolicy) -> None:
    fake, names, _ = stocked(2)
    fake.get_errors[names[1]] = EndpointConnectionError(endpoint_url="http://127.0.0.1:9")
    with pytest.raises(ServiceError) as info:
        fetch_fragments(SM, fake, names, policy, use_batch=False)
    assert info.value.fragment == names[1]


# --- error mapping -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "kind", "exit_code"),
    [
        ("ResourceNotFoundException", FragmentMissing, 4),
        ("InvalidRequestException", FragmentMissing, 4),
        ("AccessDeniedException", AccessDenied, 5),
        ("KMSAccessDeniedException", AccessDenied, 5),
        ("DecryptionFailure", AccessDenied, 5),
        ("ThrottlingException", ServiceError, 7),
        ("InternalServiceError", ServiceError, 7),
    ],
)
def test_error_for_maps_codes_to_exit_codes(
    code: str, kind: type[AgentError], exit_code: int
) -> None:
    err = error_for(SM, "frag-0", code, "msg", "rid-1")
    assert type(err) is kind
    assert err.exit_code == exit_code
    assert err.fragment == "frag-0"
    assert "frag-0" in err.message
    assert "rid-1" in err.message
