"""User data that would pass 16 KB as text is gzipped (cloud-init reads gzip), else refused."""

from __future__ import annotations

import gzip

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


def test_one_fragment_user_data_fits_the_stated_budget() -> None:
    # The boothook carries the AWS CLI fallback's code; gzip keeps it far below EC2's 16 KB.
    m = _manifest(1)
    data = render_userdata(m)
    assert len(data) <= ONE_FRAGMENT_BUDGET
    assert gzip.decompress(data) == render(m).encode()


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
