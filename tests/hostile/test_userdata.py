"""Hostile user data against the one parser every path uses (agent, fallback, datasource)."""

from __future__ import annotations

import contextlib
import gzip
import tracemalloc
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sealboot_agent.userdata import Budget, Refused, gunzip, scripts_dir, sealed_boothook, split

MARK = "SEALBOOT-HOSTILE-MARK-52c1"
MARKERS = [
    "#cloud-config",
    "#!/bin/sh",
    "#cloud-boothook",
    "#include",
    "## template: jinja",
    "#part-handler",
    "#cloud-config-archive",
    "#upstart-job",
    "",
    "junk",
]


def _verdict(data: bytes, limit: int = 1 << 20) -> list[tuple[str, bytes]] | str:
    """split()'s answer; anything but Refused escaping is a bug."""
    try:
        return [(p.kind, p.payload) for p in split(data, Budget(limit))]
    except Refused as exc:
        return str(exc)


def _part(marker: str, subtype: str, name: str | None, gz: bool) -> MIMEText | MIMEApplication:
    body = f"{marker}\necho {MARK}\n"
    if gz:
        part: MIMEText | MIMEApplication = MIMEApplication(gzip.compress(body.encode()), "x-gzip")
    else:
        part = MIMEText(body, subtype)
    if name is not None:
        part.add_header("Content-Disposition", "attachment", filename=name)
    return part


parts = st.tuples(
    st.sampled_from(MARKERS),
    st.sampled_from(["plain", "x-shellscript", "cloud-config", "cloud-boothook", "jinja2", "x"]),
    st.one_of(st.none(), st.text(min_size=1, max_size=40)),
    st.booleans(),
)


@given(st.binary(max_size=4096))
def test_any_bytes_give_parts_or_a_refusal(data: bytes) -> None:
    _verdict(data)
    _verdict(gzip.compress(data))


@given(st.lists(parts, min_size=1, max_size=8), st.booleans())
def test_mime_gives_parts_or_a_refusal_and_no_message_quotes_the_user_data(
    spec: list[tuple[str, str, str | None, bool]], gz: bool
) -> None:
    outer = MIMEMultipart()
    for marker, subtype, name, gzipped in spec:
        outer.attach(_part(marker, subtype, f"{MARK}{name}" if name else None, gzipped))
    data = outer.as_bytes()
    verdict = _verdict(gzip.compress(data) if gz else data)
    if isinstance(verdict, str):
        assert MARK not in verdict
        assert "\n" not in verdict
        assert "\x1b" not in verdict
    else:
        assert all(kind in ("cloud-config", "script", "boothook") for kind, _ in verdict)


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_nested_gzip_bombs_stop_at_the_budget_with_bounded_memory(layers: int) -> None:
    # 512 MiB of zeros: a few hundred KiB once gzipped, less at each further layer.
    bomb = b"#cloud-config\n" + b"\0" * (64 << 20)
    for _ in range(layers):
        bomb = gzip.compress(bomb, 9)
    outer = MIMEMultipart()
    outer.attach(MIMEApplication(bomb, "gzip"))
    tracemalloc.start()
    try:
        with pytest.raises(Refused) as info:
            split(gzip.compress(outer.as_bytes()), Budget(16 << 20))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # A budget of 16 MiB over all layers: either the cap is hit, or cloud-init itself would
    # not decompress the inner layers (then the part is not cloud-config and is refused).
    assert peak < 64 << 20, peak
    if layers == 1:
        assert info.value.too_large


@given(st.binary(max_size=2048))
def test_gunzip_never_exceeds_its_budget(data: bytes) -> None:
    budget = Budget(1000)
    if len(data) > 1000:
        with pytest.raises(Refused, match="cap of 1000 bytes"):
            gunzip(gzip.compress(data), budget)
    else:
        assert gunzip(gzip.compress(data), budget) == data
        assert budget.left >= 0


def test_mime_nested_3000_levels_is_refused() -> None:
    inner = "Content-Type: text/x-shellscript\n\n#!/bin/sh\n"
    for i in range(3000):
        inner = (
            f'Content-Type: multipart/mixed; boundary="b{i}"\nMIME-Version: 1.0\n\n'
            f"--b{i}\n{inner}\n--b{i}--\n"
        )
    assert "nested" in str(_verdict(inner.encode()))


@given(st.text(max_size=64))
def test_instance_ids_that_are_not_one_path_segment_are_refused(iid: str) -> None:
    try:
        path = scripts_dir(iid)
    except Refused:
        return
    assert path == f"/var/lib/cloud/instances/{iid}/scripts"
    assert "/" not in iid
    assert ".." not in iid
    assert iid.isprintable()


@given(st.binary(max_size=2048))
def test_sealed_boothook_never_raises_anything_but_a_refusal(data: bytes) -> None:
    for raw in (data, b"SEALBOOT_MANIFEST=" + data, gzip.compress(data)[:-3] + data[:3]):
        with contextlib.suppress(Refused):
            sealed_boothook(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b"#cloud-boothook\nSEALBOOT_MANIFEST=it's-mine\n",
        b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\xff\xff\xff",  # gzip magic, bad deflate
        b"SEALBOOT_MANIFEST" + b"\x80" * 10,
    ],
)
def test_datasource_inputs_that_crashed_before_are_plain_refusals(raw: bytes) -> None:
    with pytest.raises(Refused):
        sealed_boothook(raw)


@pytest.mark.parametrize(
    ("name", "body", "kind"),
    [
        ("install.cloud-config.sh", "#!/bin/sh\necho hi\n", "script"),
        ("early.script.sh", "#cloud-boothook\n#!/bin/sh\necho hi\n", "boothook"),
        ("x.cloud-config", "#!/bin/sh\necho hi\n", "script"),
    ],
)
def test_the_kind_comes_from_the_part_never_from_its_name(name: str, body: str, kind: str) -> None:
    outer = MIMEMultipart()
    part = MIMEText(body, "plain")
    part.add_header("Content-Disposition", "attachment", filename=name)
    outer.attach(part)
    verdict = _verdict(outer.as_bytes())
    assert isinstance(verdict, list), verdict
    assert [k for k, _ in verdict] == [kind]


@pytest.mark.parametrize(
    "config",
    [
        'merge_how: "dict(recurse_array)+list(append)"\n',
        '"merge_how": "list(append)"\n',
        "{merge_how: 'list(append)', runcmd: [id]}\n",
        "? merge_how\n: list(append)\n",
        '"\\x6derge_how": "list(append)"\n',
        '"merge_\\\n  how": "list(append)"\n',
        "merge_type: list(append)\n",
    ],
)
def test_a_custom_merge_is_refused_in_every_yaml_spelling(config: str) -> None:
    assert "custom merge" in str(_verdict(b"#cloud-config\n" + config.encode()))


def test_cloud_config_archive_marker_is_case_insensitive_like_cloud_init() -> None:
    assert "cloud-config-archive" in str(_verdict(b"#cloud-config-ARCHIVE\n- {type: x}\n"))


def test_a_lone_content_type_header_is_not_mime_for_cloud_init() -> None:
    data = b"Content-Type: text/x-shellscript\n\n#!/bin/sh\necho hi\n"
    assert isinstance(_verdict(data), str)  # cloud-init ignores it; sealboot refuses


def test_over_a_hundred_cloud_config_parts_sort_in_part_order() -> None:
    from sealboot_agent.userdata import cfg_name

    names = [cfg_name(i, 101) for i in range(101)]
    assert names == sorted(names)


@pytest.mark.parametrize(
    ("payload", "body"),
    [
        (b"#cloud-boothook\r\n#!/bin/sh\r\necho a\r\n", b"#!/bin/sh\necho a\n"),
        (b"#cloud-boothook extra\n#!/bin/sh\n", b"extra\n#!/bin/sh\n"),
        (b"#cloud-boothook\n  #!/bin/sh\n", b"#!/bin/sh\n"),
        (b"#cloud-boothook\n#!/bin/sh\necho a\r\n", b"#!/bin/sh\necho a\r\n"),
    ],
)
def test_nested_boothooks_are_written_as_cloud_init_writes_them(
    payload: bytes, body: bytes
) -> None:
    from sealboot_agent.userdata import boothook_body

    assert boothook_body(payload) == body


def test_crlf_scripts_are_placed_with_lf_like_cloud_init() -> None:
    from sealboot_agent.userdata import place

    written: dict[str, bytes] = {}
    parts = split(b"#!/bin/sh\r\necho a\r\n", Budget(1 << 20))
    place(
        parts,
        "i-0123456789abcdef0",
        lambda path, data, mode: written.__setitem__(path, data),
        lambda part, iid: None,
        plaintext=None,
        keep_plaintext=True,
    )
    assert list(written.values()) == [b"#!/bin/sh\necho a\n"]
