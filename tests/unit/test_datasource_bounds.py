"""The datasource's detection of sealboot user data is bounded, like every other decompression."""

from __future__ import annotations

import gzip
import sys
import tracemalloc
import types
from collections.abc import Callable, Iterator

import pytest


@pytest.fixture
def sealed_manifest() -> Iterator[Callable[[object], str | None]]:
    # The datasource imports cloud-init at module level; detection itself is stdlib only.
    fake = types.ModuleType("cloudinit")
    fake.sources = types.SimpleNamespace(  # type: ignore[attr-defined]
        DEP_FILESYSTEM=1, DEP_NETWORK=2, list_from_depends=lambda d, s: s
    )
    ec2 = types.ModuleType("cloudinit.sources.DataSourceEc2")
    ec2.DataSourceEc2 = object  # type: ignore[attr-defined]
    fake.sources.DataSourceEc2 = ec2
    mods = {
        "cloudinit": fake,
        "cloudinit.sources": fake.sources,
        "cloudinit.sources.DataSourceEc2": ec2,
    }
    saved = {k: sys.modules.get(k) for k in mods}
    sys.modules.update(mods)
    sys.modules.pop("sealboot_cloudinit.DataSourceSealboot", None)
    try:
        from sealboot_cloudinit.DataSourceSealboot import sealed_manifest as fn

        yield fn
    finally:
        sys.modules.pop("sealboot_cloudinit.DataSourceSealboot", None)
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def test_a_gzip_bomb_is_not_decompressed_past_the_limit(
    sealed_manifest: types.FunctionType,
) -> None:
    bomb = gzip.compress(b"SEALBOOT_MANIFEST=''\n" + b"\0" * (256 << 20), 9)
    tracemalloc.start()
    try:
        assert sealed_manifest(bomb) is None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, peak
