"""The retry loop, the shared deadline and the watchdog that bounds what botocore cannot."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from botocore.exceptions import ConnectionClosedError, EndpointConnectionError

from sealboot_agent import deadline as deadline_module
from sealboot_agent.deadline import (
    AWS,
    IMDS,
    Deadline,
    DeadlinePassed,
    Watchdog,
    finish,
    waiting_for,
)
from sealboot_agent.errors import AgentError, ImdsError, ServiceError
from sealboot_agent.retry import (
    Exhausted,
    NotStarted,
    RetryPolicy,
    classify,
    client_error,
    with_retries,
)
from sealboot_agent.stores import DENIED, KMS, KMS_KEY, NOT_FOUND, RETRYABLE, UNREADABLE
from tests.unit.fakes import FakeClock
from tests.unit.fakes import client_error as aws_error


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def policy(clock: FakeClock, seconds: float = 30.0, denied_for: float = 0.0) -> RetryPolicy:
    return RetryPolicy(Deadline(seconds, clock, clock.sleep), denied_until=clock() + denied_for)


class Calls:
    """A call that raises the scripted errors in turn, then answers."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.count = 0

    def __call__(self) -> str:
        self.count += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


@pytest.fixture(autouse=True)
def _forget_the_watchdog(monkeypatch: pytest.MonkeyPatch) -> None:
    """A watchdog that fired here must not make a later finish() end pytest."""
    monkeypatch.setattr(deadline_module, "_fired", False)


# --- with_retries ----------------------------------------------------------------------------


def test_throttling_is_retried_until_it_clears(clock: FakeClock) -> None:
    call = Calls(aws_error("ThrottlingException"), aws_error("ThrottlingException"))
    assert with_retries(call, policy(clock), "GetSecretValue x") == "ok"
    assert call.count == 3


def test_transport_errors_are_retried(clock: FakeClock) -> None:
    call = Calls(
        EndpointConnectionError(endpoint_url="https://x"),
        ConnectionClosedError(endpoint_url="https://x"),
    )
    assert with_retries(call, policy(clock), "GetSecretValue x") == "ok"


def test_final_errors_are_raised_at_once(clock: FakeClock) -> None:
    call = Calls(aws_error("ResourceNotFoundException"))
    with pytest.raises(Exception, match="ResourceNotFoundException"):
        with_retries(call, policy(clock), "GetSecretValue x")
    assert call.count == 1


def test_access_denied_is_retried_only_inside_the_window(clock: FakeClock) -> None:
    inside = Calls(aws_error("AccessDeniedException"))
    assert with_retries(inside, policy(clock, denied_for=20.0), "x") == "ok"
    outside = Calls(aws_error("AccessDeniedException"))
    with pytest.raises(Exception, match="AccessDenied"):
        with_retries(outside, policy(clock), "x")


def test_retries_stop_at_the_deadline(clock: FakeClock) -> None:
    call = Calls(*[aws_error("ThrottlingException")] * 1000)
    with pytest.raises(Exhausted) as info:
        with_retries(call, policy(clock, seconds=5.0), "x")
    assert clock.now - 1000.0 <= 5.0
    assert "5s deadline ran out" in info.value.describe()


def test_no_call_starts_after_the_deadline(clock: FakeClock) -> None:
    expired = policy(clock, seconds=1.0)
    clock.sleep(2.0)
    call = Calls()
    with pytest.raises(Exhausted) as info:
        with_retries(call, expired, "DeleteSecret x")
    assert call.count == 0
    assert isinstance(info.value.cause, NotStarted)
    assert "before DeleteSecret x could start" in info.value.describe()


def test_a_call_the_watchdog_cut_counts_as_exhausted(clock: FakeClock) -> None:
    call = Calls(DeadlinePassed(3.0, AWS, "AWS (GetSecretValue x)"))
    with pytest.raises(Exhausted) as info:
        with_retries(call, policy(clock), "GetSecretValue x")
    assert call.count == 1
    assert info.value.describe() == (
        "the 3s deadline ran out while waiting for AWS (GetSecretValue x); "
        "gave up after 1 attempt(s)"
    )


def test_aws_error_text_is_escaped(clock: FakeClock) -> None:
    code, message, _ = client_error(aws_error("Weird\x1b[2J", "line\nforged: entry" + "x" * 500))
    assert code == "Weird\\x1b[2J"
    assert "\n" not in message
    assert message.endswith("...")


def test_unknown_botocore_errors_are_final() -> None:
    assert classify(aws_error("ValidationException")) == "final"
    assert classify(aws_error("InternalServiceError")) == "retry"


# --- the watchdog ----------------------------------------------------------------------------


def test_watchdog_interrupts_a_blocked_call_in_the_main_thread() -> None:
    started = time.monotonic()
    call = "AWS (BatchGetSecretValue of 1 fragment(s))"
    with pytest.raises(DeadlinePassed) as info, Watchdog(0.2, grace=0.1), waiting_for(AWS, call):
        time.sleep(5)
    assert time.monotonic() - started < 1.0
    assert "ran out while waiting for AWS (BatchGetSecretValue" in str(info.value)


def test_watchdog_leaves_work_that_is_not_a_network_call_alone() -> None:
    with Watchdog(0.1, grace=0.05) as dog:
        time.sleep(0.4)  # e.g. a user boothook the hand-off runs after the deadline
    assert dog.fired is None
    assert not dog.armed


def test_watchdog_ends_the_process_when_a_worker_thread_is_blocked() -> None:
    ended: list[int] = []
    said: list[AgentError] = []
    release = threading.Event()

    def worker() -> None:
        with waiting_for(AWS, "AWS (GetSecretValue x)"):
            release.wait(5)

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        time.sleep(0.05)
        with Watchdog(0.1, grace=0.05, exit_fn=ended.append, last_words=said.append):
            time.sleep(0.5)
    finally:
        release.set()
        thread.join()
    assert ended == [7]
    assert [type(e) for e in said] == [ServiceError]


def test_watchdog_is_not_armed_off_the_main_thread() -> None:
    armed: list[bool] = []

    def other() -> None:
        with Watchdog(0.01) as dog:
            armed.append(dog.armed)

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert armed == [False]


@pytest.mark.parametrize(("kind", "cls"), [(IMDS, ImdsError), (AWS, ServiceError)])
def test_deadline_passed_becomes_the_documented_error(kind: str, cls: type[AgentError]) -> None:
    err = DeadlinePassed(3.0, kind, "x").error()
    assert type(err) is cls
    assert "no fragment was deleted" not in err.advice  # the deletes may have begun


def test_finish_returns_the_code_when_the_watchdog_never_fired() -> None:
    assert finish(4) == 4


@pytest.fixture
def _no_calls() -> Iterator[None]:
    yield
    assert deadline_module._calls == {}


@pytest.mark.usefixtures("_no_calls")
def test_waiting_for_forgets_the_call_when_it_ends() -> None:
    with pytest.raises(RuntimeError), waiting_for(IMDS, "IMDS (GET x)"):
        raise RuntimeError


@pytest.mark.parametrize("code", sorted(RETRYABLE))
def test_every_code_the_table_calls_retryable_is_retried(code: str) -> None:
    assert classify(aws_error(code)) == "retry"


@pytest.mark.parametrize("code", sorted(DENIED))
def test_every_denial_in_the_table_waits_for_the_boot_window(code: str) -> None:
    assert classify(aws_error(code)) == "denied"


@pytest.mark.parametrize("code", sorted(NOT_FOUND | KMS | KMS_KEY | UNREADABLE))
def test_what_another_attempt_cannot_change_is_final(code: str) -> None:
    assert classify(aws_error(code)) == "final"
