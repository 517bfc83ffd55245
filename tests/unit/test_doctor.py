"""doctor against a local IMDS emulator and scripted AWS clients: verdicts, skips, advice."""

from __future__ import annotations

import dataclasses
import io
import logging
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from sealboot_agent import doctor
from sealboot_agent.cli import main
from sealboot_agent.doctor import FAIL, OK, SKIP, WARN, Check, DoctorConfig, run_doctor, summary
from sealboot_agent.logs import configure_logging
from sealboot_agent.run import Deps
from sealboot_agent.wire import Manifest
from tests.stack.imds import ImdsEmulator
from tests.unit.fakes import client_error

# What a parameter's value would be; it must never reach a verdict or a log line.
VALUE_MARKER = "SEALBOOT-TEST-SECRET-VALUE-5d1e"
SSM = Manifest.capa("/cluster.x-k8s.io/0b8f", 12, region="us-east-1", backend="ssm")
SM = Manifest.capa("aws.cluster.x-k8s.io/0b8f", 3, region="us-east-1")


@pytest.fixture(autouse=True)
def no_cloud_init(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever this machine has installed, cloud-init is missing: one WARN, always."""
    monkeypatch.setattr("sealboot_agent.doctor.shutil.which", lambda name: None)


@pytest.fixture(autouse=True)
def quiet_logger() -> Iterator[None]:
    logger = logging.getLogger("sealboot_agent")
    try:
        yield
    finally:
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()


class FakeSsm:
    """GetParameters over *store* (name -> type); every call recorded, any other call fails."""

    def __init__(self, store: dict[str, str], error: Exception | None = None) -> None:
        self.meta = SimpleNamespace(endpoint_url="")
        self.store = store
        self.error = error
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def get_parameters(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("get_parameters", kwargs))
        if self.error is not None:
            raise self.error
        names = kwargs["Names"]
        assert len(names) <= 10
        found = [n for n in names if n in self.store]
        return {
            "Parameters": [
                {"Name": n, "Type": self.store[n], "Value": VALUE_MARKER, "Version": 1}
                for n in found
            ],
            "InvalidParameters": [n for n in names if n not in self.store],
            "ResponseMetadata": {"RequestId": "ssm-req-1"},
        }

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"doctor called {name}, which it must not")


class FakeSecrets:
    """DescribeSecret over *store* (name -> extra metadata); any other call fails."""

    def __init__(self, store: dict[str, dict[str, Any]], error: Exception | None = None) -> None:
        self.meta = SimpleNamespace(endpoint_url="")
        self.store = store
        self.error = error
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def describe_secret(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("describe_secret", kwargs))
        if self.error is not None:
            raise self.error
        name = kwargs["SecretId"]
        if name not in self.store:
            raise client_error("ResourceNotFoundException", "not found", "DescribeSecret")
        return {"Name": name, **self.store[name], "ResponseMetadata": {"RequestId": "sm-req-1"}}

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"doctor called {name}, which it must not")


def run_with(client: Any, imds: ImdsEmulator, manifest: Manifest | None) -> list[Check]:
    # The endpoint check connects: to the emulator, unless the test chose an endpoint.
    client.meta.endpoint_url = client.meta.endpoint_url or imds.url
    cfg = DoctorConfig(manifest=manifest, imds_endpoint=imds.url, deadline=5)
    return run_doctor(cfg, Deps(client_factory=lambda **_: client))


def verdicts(checks: list[Check], name: str) -> list[str]:
    return [c.verdict for c in checks if c.name == name]


def assert_advice_on_every_fail_and_warn(checks: list[Check]) -> None:
    for check in checks:
        if check.verdict in (FAIL, WARN):
            assert check.todo, check
        if check.verdict == SKIP:
            assert check.detail, check  # says why


def test_ssm_fragments_are_checked_with_get_parameters_and_never_decrypted(
    imds: ImdsEmulator,
) -> None:
    gone = SSM.fragments[11]
    client = FakeSsm({n: "SecureString" for n in SSM.fragments if n != gone})

    checks = run_with(client, imds, SSM)

    # Only the call the node policy grants, in batches of ten, without decryption.
    assert [op for op, _ in client.calls] == ["get_parameters", "get_parameters"]
    assert all(kw["WithDecryption"] is False for _, kw in client.calls)
    frag = [c for c in checks if c.name == "fragment"]
    assert [c.verdict for c in frag] == [OK] * 11 + [FAIL]
    assert frag[0].detail.endswith("exists (SecureString, not decrypted)")
    assert frag[11].detail == f"{gone}: does not exist"
    assert "re-seal" in frag[11].todo
    assert VALUE_MARKER not in repr(checks)
    assert_advice_on_every_fail_and_warn(checks)


def test_ssm_plain_string_parameter_is_a_warning(imds: ImdsEmulator) -> None:
    manifest = Manifest.capa("/cluster.x-k8s.io/0b8f", 1, region="us-east-1", backend="ssm")
    client = FakeSsm({manifest.fragments[0]: "String"})

    checks = run_with(client, imds, manifest)

    assert verdicts(checks, "fragment") == [WARN]
    assert "unencrypted" in checks[-2].detail
    assert VALUE_MARKER not in repr(checks)
    assert_advice_on_every_fail_and_warn(checks)


def test_ssm_get_parameters_denied_fails_and_names_the_grant(imds: ImdsEmulator) -> None:
    client = FakeSsm({}, error=client_error("AccessDeniedException", "no", "GetParameters"))

    checks = run_with(client, imds, SSM)

    assert len(client.calls) == 1  # no DescribeParameters, no retry per batch
    (check,) = [c for c in checks if c.name == "fragments"]
    assert check.verdict == FAIL
    assert "12 not checked" in check.detail
    assert "ssm:GetParameters" in check.todo


def test_secrets_manager_denial_is_one_skip_with_why_not_a_pass(imds: ImdsEmulator) -> None:
    client = FakeSecrets({}, error=client_error("AccessDeniedException", "no", "DescribeSecret"))

    checks = run_with(client, imds, SM)

    assert len(client.calls) == 1  # the rest would be denied too
    (check,) = [c for c in checks if c.name.startswith("fragment")]
    assert check.verdict == SKIP
    assert "3 not checked" in check.detail
    assert "DescribeSecret" in check.detail
    assert summary(checks).endswith("0 failed, 1 skipped")


def test_secret_missing_or_scheduled_for_deletion_fails(imds: ImdsEmulator) -> None:
    a, b, c = SM.fragments
    client = FakeSecrets({a: {}, b: {"DeletedDate": "2026-01-01T00:00:00Z"}})

    checks = run_with(client, imds, SM)

    frag = [ch for ch in checks if ch.name == "fragment"]
    assert [ch.verdict for ch in frag] == [OK, FAIL, FAIL]
    assert "scheduled for deletion" in frag[1].detail
    assert "restore-secret" in frag[1].todo
    assert frag[2].detail == f"{c}: does not exist"
    assert_advice_on_every_fail_and_warn(checks)


def test_imds_failure_lists_what_could_not_run_as_skipped(imds: ImdsEmulator) -> None:
    imds.faults.refuse_token = True
    client = FakeSecrets({})
    client.meta.endpoint_url = "http://127.0.0.1:9"

    checks = run_with(client, imds, SM)

    assert [(c.name, c.verdict) for c in checks] == [
        ("imds", FAIL),
        ("identity", SKIP),
        ("credentials", SKIP),
        ("region", OK),  # from the manifest
        ("endpoint", FAIL),  # the fake's 127.0.0.1:9 refuses connections
        ("fragments", SKIP),
        ("cloud-init", WARN),
    ]
    assert summary(checks) == "1 passed, 1 warning, 2 failed, 3 skipped"
    assert_advice_on_every_fail_and_warn(checks)


def test_a_missing_instance_profile_fails_the_credentials_check(imds: ImdsEmulator) -> None:
    imds.faults.no_role_until = float("inf")
    cfg = DoctorConfig(manifest=SM, imds_endpoint=imds.url, deadline=1)

    checks = run_doctor(cfg, Deps(client_factory=lambda **_: FakeSecrets({})))

    assert verdicts(checks, "imds") == [OK]
    assert verdicts(checks, "identity") == [OK]
    assert verdicts(checks, "credentials") == [FAIL]
    assert verdicts(checks, "fragments") == [SKIP]
    assert_advice_on_every_fail_and_warn(checks)


def test_summary_counts_each_verdict_apart() -> None:
    checks = [
        Check("a", OK, ""),
        Check("b", WARN, "", "x"),
        Check("c", WARN, "", "x"),
        Check("d", FAIL, "", "x"),
        Check("e", SKIP, "why"),
    ]
    assert summary(checks) == "1 passed, 2 warnings, 1 failed, 1 skipped"
    assert summary(checks[:2]) == "1 passed, 1 warning, 0 failed, 0 skipped"


def test_no_manifest_skips_the_fragment_check(imds: ImdsEmulator) -> None:
    checks = run_with(FakeSecrets({}), imds, None)
    assert verdicts(checks, "fragments") == [SKIP]
    assert "no --manifest" in checks[-2].detail


@pytest.mark.parametrize(
    ("backend", "host"),
    [("secrets-manager", "secretsmanager-fips"), ("ssm", "ssm-fips")],
)
def test_the_manifests_fips_setting_picks_the_fips_endpoint(
    backend: str, host: str, imds: ImdsEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []

    def reachable(url: str, timeout: float) -> Check:
        seen.append(url)
        return Check("endpoint", OK, url)

    monkeypatch.setattr(doctor, "_reachable", reachable)
    manifest = Manifest.capa("aws.cluster.x-k8s.io/0b8f", 1, region="us-east-1")
    if backend == "ssm":
        manifest = Manifest.capa("/cluster.x-k8s.io/0b8f", 1, region="us-east-1", backend="ssm")
    imds.faults.refuse_token = True  # no credentials: no call to AWS, only the endpoint

    run_doctor(
        DoctorConfig(manifest=dataclasses.replace(manifest, use_fips=True), imds_endpoint=imds.url),
        Deps(),
    )

    assert seen == [f"https://{host}.us-east-1.amazonaws.com"]


def test_verbose_doctor_logs_imds_requests_timings_and_request_ids(imds: ImdsEmulator) -> None:
    err = io.StringIO()
    configure_logging(1, None, err)
    manifest = Manifest.capa("/cluster.x-k8s.io/0b8f", 2, region="us-east-1", backend="ssm")

    run_with(FakeSsm({n: "SecureString" for n in manifest.fragments}), imds, manifest)

    text = err.getvalue()
    assert "IMDS: " in text
    assert " request(s) in " in text
    assert "request id ssm-req-1" in text
    assert "FIPS endpoints off" in text
    assert VALUE_MARKER not in text


def test_doctor_cli_prints_what_to_do_under_each_fail_and_the_counts(
    imds: ImdsEmulator,
) -> None:
    imds.faults.refuse_token = True
    out, err = io.StringIO(), io.StringIO()
    argv = ["doctor", "--manifest", SM.to_json(), "--endpoint-url", "http://127.0.0.1:9"]

    code = main([*argv, "--imds-endpoint", imds.url], {}, out, err)

    assert code == 1
    lines = out.getvalue().splitlines()
    for i, line in enumerate(lines):
        if line.startswith(("[FAIL]", "[WARN]")):
            assert lines[i + 1].startswith("       what to do: "), line
    assert "[SKIP] fragments: needs the instance-profile credentials" in out.getvalue()
    assert lines[-1] == "1 passed, 1 warning, 2 failed, 3 skipped"


def test_doctor_cli_exits_0_with_warnings_and_skips(imds: ImdsEmulator) -> None:
    out = io.StringIO()
    # Everything passes but the cloud-init WARN and the fragments SKIP (no manifest).
    argv = ["doctor", "--region", "us-east-1", "--endpoint-url", imds.url]

    code = main([*argv, "--imds-endpoint", imds.url], {}, out, io.StringIO())

    assert code == 0, out.getvalue()
    assert out.getvalue().splitlines()[-1] == "5 passed, 1 warning, 0 failed, 1 skipped"


def test_an_unreachable_endpoint_skips_the_fragment_calls(imds: ImdsEmulator) -> None:
    client = FakeSecrets({})
    client.meta.endpoint_url = "http://127.0.0.1:9"

    checks = run_with(client, imds, SM)

    assert verdicts(checks, "endpoint") == [FAIL]
    assert verdicts(checks, "fragments") == [SKIP]
    assert client.calls == []
    assert_advice_on_every_fail_and_warn(checks)
