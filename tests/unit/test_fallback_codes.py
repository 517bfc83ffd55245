"""The AWS CLI fallback classifies AWS error codes by the one table in stores.py."""

from __future__ import annotations

import pytest

from sealboot_agent import fallback, stores


@pytest.mark.parametrize("code", sorted(stores.RETRYABLE))
def test_every_retryable_code_is_retried_by_the_fallback(code: str) -> None:
    err = f"An error occurred ({code}) when calling the GetSecretValue operation: slow down"
    assert fallback._RETRY.search(err)


@pytest.mark.parametrize(
    "code",
    sorted(stores.DENIED | stores.KMS | stores.NOT_FOUND | stores.UNREADABLE | stores.EXISTS),
)
def test_no_final_code_is_retried_by_the_fallback(code: str) -> None:
    err = f"An error occurred ({code}) when calling the GetSecretValue operation: no"
    assert not fallback._RETRY.search(err)
