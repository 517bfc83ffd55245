"""Reassemble fragments, verify the digest, and gunzip with a size cap.

Example::

    >>> assemble(manifest, [b"\\x1f\\x8b..."], max_size=16 << 20)
    b'#cloud-config\\n...'
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from sealboot_agent.errors import IntegrityError
from sealboot_agent.userdata import Budget, Refused, gunzip
from sealboot_agent.wire import Manifest, sha256_hex


def gunzip_capped(data: bytes, max_size: int) -> bytes:
    """Decompress every gzip member in *data*, refusing output larger than *max_size*."""
    if not data:
        raise IntegrityError("payload is empty")
    if data[:2] != b"\x1f\x8b":
        raise IntegrityError("payload is not valid gzip (no gzip header)")
    try:
        return gunzip(data, Budget(max_size))
    except Refused as exc:
        if exc.too_large:
            raise IntegrityError(
                f"user data is larger than the cap of {max_size} bytes once decompressed",
                hint="raise --max-size if this payload is expected; nothing was deleted",
            ) from None
        raise IntegrityError(f"payload is not valid gzip: {exc}") from None


def assemble(manifest: Manifest, chunks: Sequence[bytes], *, max_size: int) -> bytes:
    """Return the verified, decompressed user data, or raise IntegrityError naming the cause."""
    stream = b"".join(chunks)
    if manifest.size is not None and len(stream) != manifest.size:
        raise IntegrityError(
            f"fragments hold {len(stream)} bytes, the manifest says {manifest.size}; "
            f"sizes per fragment: {[len(c) for c in chunks]}"
        )
    if manifest.sha256 is not None:
        actual = sha256_hex(stream)
        if not hmac.compare_digest(actual, manifest.sha256):
            raise IntegrityError(
                f"sha256 of the reassembled fragments is {actual}, the manifest says "
                f"{manifest.sha256}"
            )
    payload = gunzip_capped(stream, max_size)
    if manifest.raw_size is not None and len(payload) != manifest.raw_size:
        raise IntegrityError(
            f"user data is {len(payload)} bytes, the manifest says {manifest.raw_size}"
        )
    return payload
