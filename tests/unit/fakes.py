"""Fakes shared by the unit tests: a scripted Secrets Manager client and a fake clock."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import botocore.session
from botocore.exceptions import ClientError
from botocore.stub import Stubber


def client_error(
    code: str, message: str = "injected by the test", op: str = "Op", request_id: str = "r1"
) -> Any:
    """A botocore ClientError shaped like the ones AWS returns."""
    return ClientError(
        {
            "Error": {"Code": code, "Message": message},
            "ResponseMetadata": {"RequestId": request_id},
        },
        op,
    )


@contextlib.contextmanager
def stubbed(service: str) -> Iterator[tuple[Any, Stubber]]:
    """A real botocore client whose HTTP layer is botocore's Stubber; every answer used up."""
    client = botocore.session.Session().create_client(
        service,
        region_name="eu-west-1",
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="secret",
    )
    with Stubber(client) as stub:
        yield client, stub
        stub.assert_no_pending_responses()


class FakeSecrets:
    """An in-memory Secrets Manager client that records every call and can be told to fail.

    ``create_script`` is consumed one item per CreateSecret call: an exception is raised,
    ``None`` lets the call succeed. ``get_errors`` / ``delete_errors`` map a name to the
    exception every such call raises; ``get_failures`` maps a name to exceptions raised by
    its next GetSecretValue calls, one each; ``batch_error`` is raised by every
    BatchGetSecretValue and ``batch_errors_entries`` are added to each batch answer.
    """

    def __init__(self, region: str = "eu-west-1") -> None:
        self.meta = SimpleNamespace(region_name=region)
        self.store: dict[str, bytes | str] = {}
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.create_script: list[Exception | None] = []
        self.get_errors: dict[str, Exception] = {}
        self.get_failures: dict[str, list[Exception]] = {}
        self.delete_errors: dict[str, Exception] = {}
        self.batch_error: Exception | None = None
        self.batch_errors_entries: list[dict[str, str]] = []

    def ops(self, name: str) -> list[dict[str, Any]]:
        return [kwargs for op, kwargs in self.calls if op == name]

    def create_secret(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("create_secret", kwargs))
        if self.create_script:
            step = self.create_script.pop(0)
            if step is not None:
                raise step
        name = kwargs["Name"]
        if name in self.store:
            raise client_error("ResourceExistsException", f"{name} exists", "CreateSecret")
        self.store[name] = kwargs["SecretBinary"]
        return {"Name": name, "ResponseMetadata": {"RequestId": "create"}}

    def delete_secret(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("delete_secret", kwargs))
        name = kwargs["SecretId"]
        if name in self.delete_errors:
            raise self.delete_errors[name]
        if name not in self.store:
            raise client_error("ResourceNotFoundException", f"{name} not found", "DeleteSecret")
        del self.store[name]
        return {"Name": name}

    def _item(self, name: str) -> dict[str, Any]:
        value = self.store[name]
        if isinstance(value, str):
            return {"Name": name, "SecretString": value}
        return {"Name": name, "SecretBinary": value}

    def get_secret_value(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("get_secret_value", kwargs))
        name = kwargs["SecretId"]
        if name in self.get_errors:
            raise self.get_errors[name]
        if self.get_failures.get(name):
            raise self.get_failures[name].pop(0)
        if name not in self.store:
            raise client_error("ResourceNotFoundException", "not found", "GetSecretValue")
        item = self._item(name)
        item["ResponseMetadata"] = {"RequestId": f"get-{name}"}
        return item

    def batch_get_secret_value(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("batch_get_secret_value", kwargs))
        if self.batch_error is not None:
            raise self.batch_error
        ids: list[str] = kwargs["SecretIdList"]
        if len(ids) > 20:
            raise client_error("ValidationException", "too many ids", "BatchGetSecretValue")
        # Real AWS does not promise any order; answer backwards to catch code relying on it.
        values = [self._item(n) for n in reversed(ids) if n in self.store]
        errors = [
            {"SecretId": n, "ErrorCode": "ResourceNotFoundException", "Message": "not found"}
            for n in ids
            if n not in self.store
        ]
        errors += self.batch_errors_entries
        return {
            "SecretValues": values,
            "Errors": errors,
            "ResponseMetadata": {"RequestId": "batch"},
        }


class FakeClock:
    """A monotonic clock that only moves when the code under test sleeps."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        with self._lock:
            self.sleeps.append(seconds)
            self.now += seconds
