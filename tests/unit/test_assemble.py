"""Unit tests of reassembly, digest check and the capped gunzip."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import tracemalloc
import zlib

import pytest

from sealboot_agent.assemble import assemble, gunzip_capped
from sealboot_agent.errors import IntegrityError
from sealboot_agent.wire import Manifest, gzip_deterministic, split

USERDATA = b"#cloud-config\nwrite_files:\n- path: /etc/x\n  content: secret\n" * 50
NAMES = ("aws.cluster.x-k8s.io/ns/c/m/tok-0", "aws.cluster.x-k8s.io/ns/c/m/tok-1")


def sealed(data: bytes, pieces: int = 2) -> tuple[Manifest, list[bytes]]:
    """A native manifest and fragments built independently of the sealing code."""
    stream = gzip.compress(data, mtime=0)
    size = -(-len(stream) // pieces)
    chunks = [stream[i : i + size] for i in range(0, len(stream), size)]
    names = tuple(f"aws.cluster.x-k8s.io/ns/c/m/tok-{i}" for i in range(len(chunks)))
    m = Manifest(
        backend="secrets-manager",
        format="native",
        fragments=names,
        sha256=hashlib.sha256(stream).hexdigest(),
        size=len(stream),
        raw_size=len(data),
    )
    return m, chunks


def capa(count: int) -> Manifest:
    return Manifest.capa("aws.cluster.x-k8s.io/0b8f5c8e-1f7a-4f0e-9d0c-3c1f6c2b7a11", count)


def test_assemble_returns_the_user_data() -> None:
    m, chunks = sealed(USERDATA, 3)
    assert len(chunks) == 3
    assert assemble(m, chunks, max_size=1 << 20) == USERDATA


def test_assemble_of_wire_split_round_trips() -> None:
    data = os.urandom(20000)
    stream = gzip_deterministic(data)
    chunks = split(stream, 7000)
    assert assemble(capa(len(chunks)), chunks, max_size=1 << 20) == data


def test_digest_mismatch_names_both_digests() -> None:
    m, chunks = sealed(USERDATA)
    evil = gzip.compress(USERDATA.replace(b"secret", b"sekret"), mtime=0)
    # Same length, same total size: only the digest can tell.
    forged = [evil[: len(chunks[0])], evil[len(chunks[0]) :]]
    assert len(b"".join(forged)) == m.size
    with pytest.raises(IntegrityError) as info:
        assemble(m, forged, max_size=1 << 20)
    msg = info.value.message
    assert m.sha256 is not None
    assert m.sha256 in msg
    assert hashlib.sha256(evil).hexdigest() in msg
    assert info.value.exit_code == 6


def test_swapped_fragments_fail_the_digest() -> None:
    m, chunks = sealed(os.urandom(3000), 2)
    with pytest.raises(IntegrityError, match="sha256"):
        assemble(m, list(reversed(chunks)), max_size=1 << 20)


def test_size_mismatch_is_reported_with_sizes() -> None:
    m, chunks = sealed(USERDATA)
    short = [chunks[0], chunks[1][:-1]]
    with pytest.raises(IntegrityError) as info:
        assemble(m, short, max_size=1 << 20)
    msg = info.value.message
    assert str(m.size) in msg
    assert str(len(b"".join(short))) in msg


def test_raw_size_mismatch_is_reported() -> None:
    m, chunks = sealed(USERDATA)
    lying = dataclasses.replace(m, raw_size=len(USERDATA) + 1)
    with pytest.raises(IntegrityError, match=str(len(USERDATA) + 1)):
        assemble(lying, chunks, max_size=1 << 20)


def test_truncated_gzip_is_refused() -> None:
    stream = gzip.compress(USERDATA)
    for cut in (len(stream) // 2, len(stream) - 1, 11):
        with pytest.raises(IntegrityError, match="truncated|not valid gzip"):
            gunzip_capped(stream[:cut], 1 << 20)
    with pytest.raises(IntegrityError, match="truncated"):
        assemble(capa(1), [stream[: len(stream) // 2]], max_size=1 << 20)


@pytest.mark.parametrize("junk", [b"#cloud-config\n", b"\x1f\x8bnot really", b"\x00" * 100])
def test_not_gzip_is_refused(junk: bytes) -> None:
    with pytest.raises(IntegrityError, match="gzip"):
        assemble(capa(1), [junk], max_size=1 << 20)


def test_empty_payload_is_refused() -> None:
    with pytest.raises(IntegrityError, match="empty"):
        gunzip_capped(b"", 100)


def test_gzip_bomb_stops_at_the_cap_without_allocating_it() -> None:
    bomb = gzip.compress(b"\0" * (10 << 20), compresslevel=9)
    assert len(bomb) < 64 * 1024
    cap = 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(IntegrityError, match=f"cap of {cap} bytes"):
            gunzip_capped(bomb, cap)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # A full inflate would need 10 MiB; allow the cap plus generous working space.
    assert peak < 4 * cap


def test_output_exactly_at_the_cap_is_accepted() -> None:
    data = os.urandom(5000)
    assert gunzip_capped(gzip.compress(data), 5000) == data
    with pytest.raises(IntegrityError, match="cap"):
        gunzip_capped(gzip.compress(data), 4999)


def test_cap_applies_across_gzip_members() -> None:
    stream = gzip.compress(b"a" * 600) + gzip.compress(b"b" * 600)
    with pytest.raises(IntegrityError, match="cap"):
        gunzip_capped(stream, 1000)


def test_large_compressible_payload_under_the_cap_is_complete() -> None:
    data = (b"0123456789abcdef" * 4096) * 40  # 2.5 MiB of repeats, many 64 KiB output chunks
    assert gunzip_capped(gzip.compress(data, compresslevel=9), len(data)) == data


def test_multi_member_gzip_is_decompressed_whole() -> None:
    parts = [b"#cloud-config\n", os.urandom(70000), b"runcmd: [true]\n"]
    stream = b"".join(gzip.compress(p) for p in parts)
    assert gunzip_capped(stream, 1 << 20) == b"".join(parts)
    m = Manifest(
        backend="secrets-manager",
        format="native",
        fragments=NAMES,
        sha256=hashlib.sha256(stream).hexdigest(),
        size=len(stream),
    )
    half = len(stream) // 2
    assert assemble(m, [stream[:half], stream[half:]], max_size=1 << 20) == b"".join(parts)


def test_capa_format_detects_a_corrupt_crc() -> None:
    stream = bytearray(gzip.compress(USERDATA))
    stream[-8] ^= 0x01  # first byte of the CRC32 trailer (RFC 1952)
    chunks = split(bytes(stream), 7000)
    with pytest.raises(IntegrityError, match="gzip"):
        assemble(capa(len(chunks)), chunks, max_size=1 << 20)


def test_capa_format_detects_a_corrupt_length() -> None:
    stream = bytearray(gzip.compress(USERDATA))
    stream[-1] ^= 0x01  # last byte of ISIZE
    with pytest.raises(IntegrityError, match="gzip"):
        assemble(capa(1), [bytes(stream)], max_size=1 << 20)


def test_capa_format_detects_a_flipped_data_byte() -> None:
    data = os.urandom(30000)
    stream = gzip.compress(data)
    # Stored/deflated random data: any flipped payload byte changes the output, so the CRC
    # (or the inflater) must reject it. Try several positions in the deflate body.
    for pos in range(20, len(stream) - 8, 2999):
        bad = bytearray(stream)
        bad[pos] ^= 0x40
        chunks = split(bytes(bad), 7000)
        with pytest.raises(IntegrityError):
            assemble(capa(len(chunks)), chunks, max_size=1 << 20)


def test_zlib_checks_crc_at_all() -> None:
    # Independent sanity check of the premise above, using zlib directly.
    stream = bytearray(gzip.compress(USERDATA))
    stream[-8] ^= 0x01
    with pytest.raises(zlib.error):
        zlib.decompress(bytes(stream), 16 + zlib.MAX_WBITS)
