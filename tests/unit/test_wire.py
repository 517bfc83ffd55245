"""Unit tests of the wire contract: names, tokens, manifest, gzip and split."""

from __future__ import annotations

import base64
import dataclasses
import gzip
import hashlib
import json
import re
import string
from typing import Any

import pytest

from sealboot_agent import wire
from sealboot_agent.wire import (
    COMPONENT_MAX,
    DEFAULT_ROOT,
    SECRET_NAME_MAX,
    Manifest,
    WireError,
    check_endpoint_url,
    check_secret_name,
    gzip_deterministic,
    name_component,
    native_fragment_names,
    random_token,
    split,
)

# docs/DESIGN.md: names are "A-Za-z0-9/_+=.@-" only.
ALLOWED = set(string.ascii_letters + string.digits + "/_+=.@-")
ARN_SUFFIX = re.compile(r"-[A-Za-z0-9]{6}$")
SHA = hashlib.sha256(b"payload").hexdigest()


def native(**over: Any) -> Manifest:
    fields: dict[str, Any] = {
        "backend": "secrets-manager",
        "format": "native",
        "fragments": ("aws.cluster.x-k8s.io/ns/c1/m1/tok-0", "aws.cluster.x-k8s.io/ns/c1/m1/tok-1"),
        "region": "eu-west-1",
        "endpoint_url": "https://secretsmanager.eu-west-1.amazonaws.com",
        "sha256": SHA,
        "size": 100,
        "raw_size": 300,
        "labels": {"machine": "m1", "cluster": "c1"},
    }
    fields.update(over)
    return Manifest(**fields)


# --- secret names -------------------------------------------------------------------------


def test_secret_name_of_max_length_is_accepted() -> None:
    check_secret_name("a" * SECRET_NAME_MAX)
    check_secret_name("aws.cluster.x-k8s.io/ns/c/m/AZaz09/_+=.@-")


def test_secret_name_over_512_characters_is_refused() -> None:
    assert SECRET_NAME_MAX == 512
    with pytest.raises(WireError, match="513"):
        check_secret_name("a" * 513)


def test_empty_secret_name_is_refused() -> None:
    with pytest.raises(WireError):
        check_secret_name("")


@pytest.mark.parametrize("bad", ["a b", "a'b", "a$b", "a:b", "a*b", "ä", "a\nb", "a;b", "a`b"])
def test_secret_name_with_forbidden_character_is_refused(bad: str) -> None:
    with pytest.raises(WireError, match="characters"):
        check_secret_name(bad)


def test_secret_name_with_trailing_newline_is_refused() -> None:
    with pytest.raises(WireError):
        check_secret_name("aws.cluster.x-k8s.io/u-0\n")


# --- name components -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("$(reboot)", "$"),
        ("a'b", "'"),
        ("a b", "' '"),
        ("a/b", "/"),
        ("`id`", "`"),
        ("a;b", ";"),
    ],
)
def test_name_component_refuses_hostile_values_naming_the_character(value: str, says: str) -> None:
    with pytest.raises(WireError) as info:
        name_component("machine", value)
    msg = str(info.value)
    assert "machine" in msg
    assert says in msg


def test_name_component_refuses_empty() -> None:
    with pytest.raises(WireError, match="cluster name must not be empty"):
        name_component("cluster", "")


@pytest.mark.parametrize("value", [".", ".."])
def test_name_component_refuses_dot_paths(value: str) -> None:
    with pytest.raises(WireError, match="namespace name") as info:
        name_component("namespace", value)
    assert repr(value) in str(info.value)


def test_name_component_refuses_trailing_newline() -> None:
    with pytest.raises(WireError):
        name_component("machine", "m1\n")


def test_name_component_keeps_short_values() -> None:
    value = "worker-0.pool_a+b=c@d"
    assert name_component("machine", value) == value
    exact = "x" * COMPONENT_MAX
    assert name_component("machine", exact) == exact


def test_long_component_is_shortened_deterministically() -> None:
    a = "a" * 250 + "-one"
    b = "a" * 250 + "-two"
    assert len(a) > COMPONENT_MAX
    sa1, sa2, sb = (
        name_component("machine", a),
        name_component("machine", a),
        name_component("machine", b),
    )
    assert sa1 == sa2
    assert sa1 != sb
    for short in (sa1, sb):
        assert len(short) <= COMPONENT_MAX
        assert set(short) <= ALLOWED - {"/"}
        # A shortened component is itself a valid, short component.
        assert name_component("machine", short) == short


def test_300_character_component_is_shortened_and_valid_in_a_name() -> None:
    long = "m" * 300
    short = name_component("machine", long)
    assert len(short) <= COMPONENT_MAX
    assert short != long
    names = native_fragment_names(DEFAULT_ROOT, long, long, long, 2, random_token())
    for name in names:
        check_secret_name(name)
        assert len(name) <= SECRET_NAME_MAX
        assert name.split("/")[-2] == short


def test_shortening_differs_for_many_inputs_sharing_a_prefix() -> None:
    shorts = {name_component("machine", "p" * 200 + str(i)) for i in range(200)}
    assert len(shorts) == 200


# --- fragment names and tokens -------------------------------------------------------------


def test_native_fragment_names_have_the_contract_layout() -> None:
    token = random_token()
    names = native_fragment_names(DEFAULT_ROOT, "default", "c1", "m1", 3, token)
    assert names == [f"aws.cluster.x-k8s.io/default/c1/m1/{token}-{i}" for i in range(3)]


def test_native_fragment_names_strip_slashes_of_the_root() -> None:
    names = native_fragment_names("/custom/root/", "ns", "c", "m", 1, "tok")
    assert names == ["custom/root/ns/c/m/tok-0"]


def test_native_fragment_names_never_look_like_an_arn_suffix() -> None:
    for _ in range(50):
        for name in native_fragment_names(DEFAULT_ROOT, "ns", "c", "m", 12, random_token()):
            assert not ARN_SUFFIX.search(name), name
            assert set(name) <= ALLOWED


def test_native_fragment_names_refuse_a_name_ending_like_an_arn_suffix() -> None:
    # Index 100000 is six digits, so the last name would end in "-100000".
    with pytest.raises(WireError, match="ARN suffix"):
        native_fragment_names(DEFAULT_ROOT, "ns", "c", "m", 100001, "tok")


@pytest.mark.parametrize("hostile", ["$(reboot)", "a'b", "a b", "a/b", "", ".."])
def test_native_fragment_names_refuse_hostile_machine(hostile: str) -> None:
    with pytest.raises(WireError, match="machine name"):
        native_fragment_names(DEFAULT_ROOT, "ns", "c", hostile, 1, random_token())


def test_random_token_is_256_bits_of_base32() -> None:
    token = random_token()
    assert len(token) == 52
    assert set(token) <= set("abcdefghijklmnopqrstuvwxyz234567")
    raw = base64.b32decode(token.upper() + "=" * (-len(token) % 8))
    assert len(raw) * 8 == 256


def test_random_token_differs_between_calls() -> None:
    tokens = {random_token() for _ in range(100)}
    assert len(tokens) == 100


# --- manifest ------------------------------------------------------------------------------


def test_manifest_json_round_trip_native() -> None:
    m = native()
    again = Manifest.from_json(m.to_json())
    assert again == m
    assert again.to_json() == m.to_json()


def test_manifest_json_round_trip_capa() -> None:
    m = Manifest.capa("aws.cluster.x-k8s.io/0b8f", 3, region="us-east-1")
    assert m.fragments == tuple(f"aws.cluster.x-k8s.io/0b8f-{i}" for i in range(3))
    assert m.sha256 is None
    assert Manifest.from_json(m.to_json()) == m


def test_manifest_json_is_compact_and_sorted() -> None:
    m = native()
    data = json.loads(m.to_json())
    assert data["v"] == 1
    assert list(data) == sorted(data)
    assert " " not in m.to_json()


def test_manifest_id_is_stable() -> None:
    assert native().manifest_id == native().manifest_id
    assert Manifest.from_json(native().to_json()).manifest_id == native().manifest_id
    assert re.fullmatch(r"[0-9a-f]{32}", native().manifest_id)


@pytest.mark.parametrize(
    "change",
    [
        {"format": "capa"},
        {"fragments": ("aws.cluster.x-k8s.io/ns/c1/m1/tok-0",)},
        {
            "fragments": (
                "aws.cluster.x-k8s.io/ns/c1/m1/tok-1",
                "aws.cluster.x-k8s.io/ns/c1/m1/tok-0",
            )
        },
        {"region": "eu-west-2"},
        {"region": None},
        {"endpoint_url": "http://127.0.0.1:5000"},
        {"endpoint_url": None},
        {"sha256": hashlib.sha256(b"other").hexdigest()},
        {"size": 101},
        {"raw_size": 301},
        {"labels": {"machine": "m2", "cluster": "c1"}},
        {"labels": {}},
    ],
)
def test_manifest_id_changes_when_any_field_changes(change: dict[str, Any]) -> None:
    base = native()
    other = dataclasses.replace(base, **change)
    assert other != base
    assert other.manifest_id != base.manifest_id


def test_bad_version_is_refused_with_upgrade_advice() -> None:
    with pytest.raises(WireError, match="version 2") as info:
        native(v=2)
    assert "upgrade" in str(info.value)
    data = json.loads(native().to_json())
    del data["v"]
    with pytest.raises(WireError, match="version"):
        Manifest.from_dict(data)


def test_unknown_fields_are_refused_and_named() -> None:
    data = json.loads(native().to_json())
    data["secret"] = "x"
    data["zzz"] = 1
    with pytest.raises(WireError, match="unknown field.*secret, zzz"):
        Manifest.from_dict(data)


@pytest.mark.parametrize("bad", [SHA.upper(), SHA[:-1], SHA + "0", "g" * 64, ""])
def test_bad_sha256_is_refused(bad: str) -> None:
    with pytest.raises(WireError, match="sha256"):
        native(sha256=bad)


def test_duplicate_fragments_are_refused() -> None:
    with pytest.raises(WireError, match="twice"):
        native(fragments=("aws.cluster.x-k8s.io/a-0", "aws.cluster.x-k8s.io/a-0"))


def test_no_fragments_is_refused() -> None:
    with pytest.raises(WireError, match="no fragments"):
        native(fragments=())


def test_native_manifest_without_sha256_is_refused() -> None:
    with pytest.raises(WireError, match="native.*sha256"):
        native(sha256=None)


def test_capa_manifest_without_sha256_is_accepted() -> None:
    assert native(format="capa", sha256=None).sha256 is None


@pytest.mark.parametrize(
    "bad", ["EU-WEST-1", "eu-west", "euwest1", "eu-west-1; reboot", "", "eu west 1"]
)
def test_bad_region_is_refused(bad: str) -> None:
    with pytest.raises(WireError, match="region"):
        native(region=bad)


@pytest.mark.parametrize("good", ["us-east-1", "eu-central-2", "us-gov-west-1", "ap-southeast-4"])
def test_real_region_names_are_accepted(good: str) -> None:
    assert native(region=good).region == good


@pytest.mark.parametrize(
    "bad", ["ftp://x", "http://", "http://a b", "localhost:4566", "", "https://x\ty", "file:///etc"]
)
def test_bad_endpoint_is_refused(bad: str) -> None:
    with pytest.raises(WireError, match="endpoint URL"):
        native(endpoint_url=bad)
    with pytest.raises(WireError):
        check_endpoint_url(bad)


@pytest.mark.parametrize(
    "labels",
    [
        {"machine": "$(reboot)"},
        {"machine": "a b"},
        {"machine": "a'b"},
        {"machine": "x\ny"},
        {"machine": ""},
        {"machine": "x" * 257},
        {"a b": "x"},
        {"$(id)": "x"},
    ],
)
def test_hostile_labels_are_refused(labels: dict[str, str]) -> None:
    with pytest.raises(WireError, match="label"):
        native(labels=labels)


def test_label_with_trailing_newline_is_refused() -> None:
    with pytest.raises(WireError):
        native(labels={"machine": "m1\n"})


@pytest.mark.parametrize("bad", ["[]", '"x"', "null", "{", ""])
def test_manifest_from_bad_json_raises_wire_error(bad: str) -> None:
    with pytest.raises(WireError):
        Manifest.from_json(bad)


@pytest.mark.parametrize(
    "patch",
    [
        {"fragments": "aws.cluster.x-k8s.io/a-0"},
        {"fragments": [1, 2]},
        {"labels": ["a"]},
        {"size": -1},
        {"raw_size": "10"},
        {"backend": "ssm-typo"},
        {"format": "zip"},
    ],
)
def test_manifest_from_dict_with_bad_types_raises_wire_error(patch: dict[str, Any]) -> None:
    data = json.loads(native().to_json())
    data.update(patch)
    with pytest.raises(WireError):
        Manifest.from_dict(data)


def test_capa_count_must_be_positive() -> None:
    with pytest.raises(WireError, match="at least 1 fragment") as info:
        Manifest.capa("aws.cluster.x-k8s.io/u", 0)
    assert "--" not in str(info.value)  # the CLI words its flags; the wire contract does not


def test_too_many_fragments_is_refused() -> None:
    names = tuple(f"aws.cluster.x-k8s.io/u-{i}" for i in range(1025))
    with pytest.raises(WireError, match="1025"):
        native(fragments=names)


# --- gzip and split -------------------------------------------------------------------------


def test_gzip_deterministic_is_deterministic_and_reversible() -> None:
    data = b"#cloud-config\n" + bytes(range(256)) * 100
    a = gzip_deterministic(data)
    b = gzip_deterministic(bytes(data))
    assert a == b
    assert gzip.decompress(a) == data
    assert gzip_deterministic(data + b"x") != a


def test_gzip_deterministic_header_has_mtime_zero_and_no_name() -> None:
    stream = gzip_deterministic(b"hello")
    # RFC 1952: ID1 ID2 CM FLG MTIME(4) XFL OS
    assert stream[:3] == b"\x1f\x8b\x08"
    assert stream[3] & 0x08 == 0  # FNAME not set
    assert stream[4:8] == b"\x00\x00\x00\x00"


def test_gzip_deterministic_of_empty_input() -> None:
    assert gzip.decompress(gzip_deterministic(b"")) == b""


@pytest.mark.parametrize(
    ("length", "size"), [(10, 3), (9, 3), (1, 1), (65536 * 2 + 5, 65536), (7000, 7000)]
)
def test_split_chunk_sizes_and_reassembly(length: int, size: int) -> None:
    data = bytes(i % 251 for i in range(length))
    chunks = split(data, size)
    assert b"".join(chunks) == data
    assert len(chunks) == -(-length // size)
    assert all(len(c) == size for c in chunks[:-1])
    assert 1 <= len(chunks[-1]) <= size


def test_split_of_empty_data_gives_one_empty_chunk() -> None:
    assert split(b"", 10) == [b""]


@pytest.mark.parametrize("size", [0, -1])
def test_split_refuses_non_positive_size(size: int) -> None:
    with pytest.raises(WireError, match="positive"):
        split(b"abc", size)


def test_contract_constants_match_the_design() -> None:
    assert wire.DEFAULT_ROOT == "aws.cluster.x-k8s.io"
    assert wire.SECRETS_MANAGER_MAX_VALUE == 65536
    assert wire.CAPA_FRAGMENT_SIZE == 7000
    assert wire.BATCH_GET_MAX_IDS == 20


@pytest.mark.parametrize(
    "change",
    [
        {"region": "eu-west-1\n"},
        {"sha256": SHA + "\n"},
        {"endpoint_url": "http://127.0.0.1:5000\n"},
        {"fragments": ("aws.cluster.x-k8s.io/u-0\n",)},
    ],
)
def test_manifest_fields_with_trailing_newline_are_refused(change: dict[str, Any]) -> None:
    with pytest.raises(WireError):
        native(**change)


@pytest.mark.parametrize("field", ["v", "size", "raw_size"])
def test_boolean_is_not_an_integer_in_a_manifest(field: str) -> None:
    data = json.loads(native().to_json())
    data[field] = True
    with pytest.raises(WireError):
        Manifest.from_dict(data)


# --- hostile input: exit classes, bounds, names that are not the manifest's own -----------


@pytest.mark.parametrize("digit", ["\u0661", "\u06f1", "\u0967", "\uff11"])
def test_region_with_non_ascii_digits_is_refused(digit: str) -> None:
    # Arabic-Indic, extended Arabic-Indic, Devanagari and full-width one all match \d.
    assert re.fullmatch(r"\d", digit)
    with pytest.raises(WireError, match="region"):
        native(region=f"eu-west-{digit}")
    assert not wire.REGION_RE.match(f"eu-west-{digit}")


@pytest.mark.parametrize(
    "bad",
    [
        "http://[::1",
        "http://[::1/path",
        "https://host:99999",
        "https://host:port",
        "https://host:0",
        "http://:5000",
        "http://a\x00b",
        "http://a\x7fb",
        "http://h\u00e9te",
        "http://\u0661.example",
    ],
)
def test_endpoint_that_urllib_cannot_take_apart_is_refused(bad: str) -> None:
    with pytest.raises(WireError, match="endpoint URL"):
        check_endpoint_url(bad)
    data = json.loads(native().to_json())
    data["endpoint_url"] = bad
    with pytest.raises(WireError, match="endpoint URL"):
        Manifest.from_dict(data)


@pytest.mark.parametrize(
    "good",
    [
        "http://[::1]:5000",
        "https://vpce-1.secretsmanager.eu-west-1.vpce.amazonaws.com",
        "http://h/",
    ],
)
def test_endpoints_with_a_host_are_accepted(good: str) -> None:
    check_endpoint_url(good)


@pytest.mark.parametrize("opener", ["[", '{"a":'])
def test_deeply_nested_manifest_is_a_wire_error(opener: str) -> None:
    text = opener * 100_000
    with pytest.raises(WireError, match="nested too deeply"):
        Manifest.from_json(text)


def test_manifest_over_the_size_cap_is_refused_before_parsing() -> None:
    assert wire.MANIFEST_MAX_BYTES == 1 << 20
    text = native().to_json()
    padded = text[:-1] + " " * (wire.MANIFEST_MAX_BYTES - len(text) + 1) + "}"
    assert json.loads(padded)  # valid JSON, only too large
    with pytest.raises(WireError, match="over 1048576 bytes"):
        Manifest.from_json(padded)
    assert Manifest.from_json(text[:-1] + " " * 1000 + "}") == native()


def test_float_or_boolean_version_is_refused() -> None:
    for v in (1.0, True):
        data = json.loads(native().to_json())
        data["v"] = v
        with pytest.raises(WireError, match="version"):
            Manifest.from_dict(data)


def test_capa_count_over_the_limit_is_refused_before_the_names_are_built() -> None:
    import tracemalloc

    tracemalloc.start()
    try:
        with pytest.raises(WireError, match="200000 fragments is over the limit of 1024"):
            Manifest.capa("aws.cluster.x-k8s.io/u", 200_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # 200,000 names are ~27 MB; refusing first allocates next to nothing.
    assert peak < 1 << 20
    assert Manifest.capa("aws.cluster.x-k8s.io/u", wire.MAX_FRAGMENTS).count == wire.MAX_FRAGMENTS


LABELS = {"namespace": "ns", "cluster": "c1", "machine": "m1"}


def scoped(*names: str, backend: str = "secrets-manager", **labels: str) -> Manifest:
    return native(fragments=names, backend=backend, labels={**LABELS, **labels})


def test_sealed_manifests_pass_the_scope_check() -> None:
    token = random_token()
    for count in (1, 3):
        names = native_fragment_names(DEFAULT_ROOT, "ns", "c1", "m1", count, token)
        scoped(*names).check_scope()
        ssm = wire.ssm_fragment_names(wire.DEFAULT_SSM_ROOT, "ns", "c1", "m1", count, token)
        scoped(*ssm, backend="ssm").check_scope()
    # SealConfig.root may be any root; the labels fix what follows it.
    scoped(*native_fragment_names("custom/root", "ns", "c1", "m1", 2, token)).check_scope()
    # Over-long components: seal's labels carry them shortened; either form is accepted.
    long = "m" * 200
    names = native_fragment_names(DEFAULT_ROOT, "ns", "c1", long, 2, token)
    scoped(*names, machine=name_component("machine", long)).check_scope()
    scoped(*names, machine=long).check_scope()
    Manifest.capa("aws.cluster.x-k8s.io/0b8f", 3).check_scope()
    Manifest.capa("/cluster.x-k8s.io/0b8f", 3, backend="ssm").check_scope()


@pytest.mark.parametrize(
    ("names", "says"),
    [
        # Another machine's, cluster's or namespace's fragment slipped into the list.
        (("aws.cluster.x-k8s.io/ns/c1/m1/tok-0", "aws.cluster.x-k8s.io/ns/c1/m2/tok-1"), "m2"),
        (("aws.cluster.x-k8s.io/ns/c2/m1/tok-0",), "is not named"),
        (("aws.cluster.x-k8s.io/other/c1/m1/tok-0",), "is not named"),
        # Under the right labels, but a different seal (token) or root.
        (("aws.cluster.x-k8s.io/ns/c1/m1/tok-0", "aws.cluster.x-k8s.io/ns/c1/m1/tik-1"), "prefix"),
        (("aws.cluster.x-k8s.io/ns/c1/m1/tok-0", "other/ns/c1/m1/tok-1"), "prefix"),
        # Not the shape seal writes at all.
        (("aws.cluster.x-k8s.io/ns/c1/m1/tok-x",), "is not named"),
        (("aws.cluster.x-k8s.io/ns/c1/m1-0",), "is not named"),
        (("ns/c1/m1/tok-0",), "is not named"),
        (("aws.cluster.x-k8s.io/u-0",), "is not named"),
    ],
)
def test_fragments_outside_the_labels_prefix_are_refused(names: tuple[str, ...], says: str) -> None:
    with pytest.raises(WireError, match=says):
        scoped(*names).check_scope()


def test_ssm_fragments_outside_the_labels_prefix_are_refused() -> None:
    good = "/cluster.x-k8s.io/ns/c1/m1/tok/0"
    scoped(good, backend="ssm").check_scope()
    for bad in ("/cluster.x-k8s.io/ns/c1/m2/tok/1", "/cluster.x-k8s.io/ns/c1/m1/tak/1"):
        with pytest.raises(WireError):
            scoped(good, bad, backend="ssm").check_scope()


@pytest.mark.parametrize("missing", ["namespace", "cluster", "machine"])
def test_native_manifest_without_its_labels_is_refused_by_the_scope_check(missing: str) -> None:
    labels = {k: v for k, v in LABELS.items() if k != missing}
    m = native(fragments=("aws.cluster.x-k8s.io/ns/c1/m1/tok-0",), labels=labels)
    with pytest.raises(WireError, match=f"label.*{missing}"):
        m.check_scope()


@pytest.mark.parametrize(
    ("backend", "names"),
    [
        ("secrets-manager", ("aws.cluster.x-k8s.io/u-0", "aws.cluster.x-k8s.io/v-1")),
        ("secrets-manager", ("aws.cluster.x-k8s.io/u-0", "aws.cluster.x-k8s.io/u-x")),
        ("secrets-manager", ("aws.cluster.x-k8s.io/u",)),
        ("ssm", ("/cluster.x-k8s.io/u/0", "/cluster.x-k8s.io/v/1")),
    ],
)
def test_capa_fragments_must_share_one_prefix(backend: str, names: tuple[str, ...]) -> None:
    m = Manifest(backend=backend, format="capa", fragments=names)
    with pytest.raises(WireError):
        m.check_scope()
