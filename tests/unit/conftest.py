"""Fixtures shared by the unit tests."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.stub import Stubber

from sealboot_agent.imds import Deadline
from sealboot_agent.retry import RetryPolicy
from tests.stack.imds import Identity, ImdsEmulator
from tests.unit.fakes import FakeClock, stubbed

# Instance-profile credentials as IMDS hands them out (fake, and never valid anywhere).
CREDS = {
    "Code": "Success",
    "Type": "AWS-HMAC",
    "AccessKeyId": "ASIAFAKEFAKEFAKE1234",
    "SecretAccessKey": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYSECRETKEY",
    "Token": "IQoJb3JpZ2luX2VjEFAKE/session+token==",
    "Expiration": "2099-01-01T00:00:00Z",
}


@pytest.fixture
def restore_process_state() -> Iterator[None]:
    """main() sets the umask and configure_logging() installs handlers; undo both."""
    old = os.umask(0o022)
    os.umask(old)
    logger = logging.getLogger("sealboot_agent")
    try:
        yield
    finally:
        os.umask(old)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def policy(clock: FakeClock) -> RetryPolicy:
    """A 30 s deadline on the fake clock; AccessDenied is not retried."""
    return RetryPolicy(Deadline(30.0, clock, clock.sleep))


@pytest.fixture
def imds() -> Iterator[ImdsEmulator]:
    """A strict IMDSv2 emulator on 127.0.0.1 that hands out CREDS."""
    with ImdsEmulator(Identity(), lambda: dict(CREDS)) as emulator:
        yield emulator


@pytest.fixture
def sm() -> Iterator[tuple[Any, Stubber]]:
    """A real Secrets Manager client whose network is botocore's Stubber."""
    with stubbed("secretsmanager") as pair:
        yield pair


@pytest.fixture
def ssm() -> Iterator[tuple[Any, Stubber]]:
    """A real SSM client whose network is botocore's Stubber."""
    with stubbed("ssm") as pair:
        yield pair
