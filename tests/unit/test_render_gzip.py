"""User data that would pass 16 KB as text is gzipped (cloud-init reads gzip), else refused."""

from __future__ import annotations

import gzip
import secrets
import uuid

import pytest

from sealboot.errors import TooLarge
from sealboot.render import (
    EC2_USERDATA_MAX,
    ONE_FRAGMENT_BUDGET,
    inspect,
    render,
    render_userdata,
)
from sealboot_agent.wire import DEFAULT_ROOT, Manifest, native_fragment_names, random_token


def _manifest(count: int) -> Manifest:
    names = native_fragment_names(DEFAULT_ROOT, "default", "c1", "m1", count, random_token())
    return Manifest(
        backend="secrets-manager",
        format="native",
        fragments=tuple(names),
        region="eu-west-1",
        sha256="a" * 64,
    )


def _sealed(names: list[str], endpoint: str | None) -> Manifest:
    """A manifest as ``sealboot seal`` writes it: a real digest (incompressible), sizes, labels."""
    return Manifest(
        backend="secrets-manager",
        format="native",
        fragments=tuple(names),
        region="eu-west-1",
        endpoint_url=endpoint,
        sha256=secrets.token_hex(32),
        size=1_234_567,
        raw_size=7_654_321,
        labels={"namespace": "default", "cluster": "c1", "machine": "m1"},
    )


def _native(count: int, namespace: str, cluster: str, machine: str) -> list[str]:
    return native_fragment_names(DEFAULT_ROOT, namespace, cluster, machine, count, random_token())


def test_the_one_fragment_budget_is_8_kb() -> None:
    assert ONE_FRAGMENT_BUDGET <= 8 * 1024


@pytest.mark.parametrize("endpoint", [None, "https://secretsmanager.eu-west-1.amazonaws.com"])
@pytest.mark.parametrize("handoff", ["cloud-init", "capa"])
def test_one_fragment_user_data_fits_the_stated_budget(endpoint: str | None, handoff: str) -> None:
    # The boothook carries the AWS CLI fallback's code; gzip keeps it within the budget.
    for m in (
        _sealed(_native(1, "default", "c1", "m1"), endpoint),
        Manifest.capa(
            f"{DEFAULT_ROOT}/{uuid.uuid4()}", 1, region="us-east-1", endpoint_url=endpoint
        ),
    ):
        data = render_userdata(m, handoff)
        assert len(data) <= ONE_FRAGMENT_BUDGET, (m.format, len(data))
        assert gzip.decompress(data) == render(m, handoff).encode()


def test_typical_manifests_stay_well_under_ec2s_limit() -> None:
    # Nine fragments (CAPA's split of a ~60 KB bootstrap), names as long as real clusters use.
    long_names = _native(
        9, "team-platform-prod", "prod-eu-west-1-blue", "prod-eu-west-1-blue-md-0-7f9c8d6b5-x2k4q"
    )
    for m in (
        _sealed(long_names, "https://secretsmanager.eu-west-1.amazonaws.com"),
        Manifest.capa(f"{DEFAULT_ROOT}/{uuid.uuid4()}", 9, region="eu-west-1"),
    ):
        size = len(render_userdata(m))
        assert size <= 0.75 * EC2_USERDATA_MAX, (m.format, size)


def test_large_manifests_are_gzipped_and_still_inspectable() -> None:
    m = _manifest(60)
    assert len(render(m).encode()) > EC2_USERDATA_MAX
    data = render_userdata(m)
    assert data[:2] == b"\x1f\x8b"
    assert len(data) <= EC2_USERDATA_MAX
    assert gzip.decompress(data).startswith(b"Content-Type: multipart/mixed")
    assert inspect(data) == m


def test_too_large_even_gzipped_is_refused() -> None:
    # Names with independent random tokens do not compress: 800 of them cannot fit.
    names = [f"{DEFAULT_ROOT}/default/c1/m1/{random_token()}-0" for _ in range(800)]
    m = Manifest(
        backend="secrets-manager", format="native", fragments=tuple(names), sha256="a" * 64
    )
    with pytest.raises(TooLarge, match="even gzipped"):
        render_userdata(m)
