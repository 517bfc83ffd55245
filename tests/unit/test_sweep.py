"""Unit tests of sweep: name parsing, decisions, durations, the report, and what a sweep does
with each fragment, with botocore's Stubber in place of the network."""

from __future__ import annotations

import datetime
import io
import uuid

import pytest

from sealboot.decide import DEFAULT_INSTANCE_GRACE, decide, parse_duration
from sealboot.errors import InputError
from sealboot.fragments import Fragment, identify
from sealboot.names import INSTANCE_TAG, fragment_names, parse_fragment_name
from sealboot.report import ProgressBar, SweepReport
from sealboot.sweep import sweep
from tests.unit.fakes import stubbed
from tests.unit.test_toolkit_delete import NAMES, PARAMS

HOUR = datetime.timedelta(hours=1)
NOW = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)
TOKEN = "t" * 52
OURS = {"sealboot.io/expires-at": "2030-06-01T00:00:00Z"}
CAPA = {"sigs.k8s.io/cluster-api-provider-aws/cluster/c1": "owned", "Name": "m0"}
IID = "i-0123456789abcdef0"


def _tags(**tags: str) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in tags.items()]


# --- names: what seal writes, sweep reads back ------------------------------------------------


@pytest.mark.parametrize("backend", ["secrets-manager", "ssm"])
@pytest.mark.parametrize("fmt", ["native", "capa"])
def test_every_name_seal_writes_parses_back(backend: str, fmt: str) -> None:
    for name in fragment_names(backend, fmt, None, "ns", "c1", "m0", 12):
        parsed = parse_fragment_name(backend, name)
        assert parsed is not None, name
        assert parsed.format == fmt
        if fmt == "native":
            assert (parsed.namespace, parsed.cluster, parsed.machine) == ("ns", "c1", "m0")


@pytest.mark.parametrize(
    "name",
    [
        f"aws.cluster.x-k8s.io/ns/c1/m0/{TOKEN}-\u0663",  # an Arabic-Indic digit
        f"aws.cluster.x-k8s.io/ns/c1/m0/{TOKEN}-01",  # not how an index is written
        f"aws.cluster.x-k8s.io/ns/c1/m0/{TOKEN}-1024",  # past the most a manifest names
        f"aws.cluster.x-k8s.io/ns/c$1/m0/{TOKEN}-0",  # a component wire refuses
        f"aws.cluster.x-k8s.io/ns/c1/m0/{TOKEN}_x-0",  # a token seal never writes
        f"other.root/ns/c1/m0/{TOKEN}-0",
        "aws.cluster.x-k8s.io/something-else",
        f"aws.cluster.x-k8s.io/{str(uuid.uuid4()).upper()}-0",
    ],
)
def test_names_seal_never_writes_are_not_ours(name: str) -> None:
    assert parse_fragment_name("secrets-manager", name) is None


def test_a_secret_name_is_not_a_parameter_name() -> None:
    (name,) = fragment_names("secrets-manager", "native", None, "ns", "c1", "m0", 1)
    assert parse_fragment_name("ssm", name) is None
    (param,) = fragment_names("ssm", "native", None, "ns", "c1", "m0", 1)
    assert parse_fragment_name("secrets-manager", param) is None


def test_identify_needs_sealboots_tags_on_a_native_name() -> None:
    native = f"aws.cluster.x-k8s.io/ns/c1/m0/{TOKEN}-3"
    frag = identify("secrets-manager", native, OURS, None)
    assert frag is not None
    assert (frag.format, frag.namespace, frag.cluster, frag.machine) == ("native", "ns", "c1", "m0")
    assert identify("secrets-manager", native, {}, None) is None


def test_identify_needs_a_cluster_tag_on_a_capa_name() -> None:
    capa_name = f"aws.cluster.x-k8s.io/{uuid.uuid4()}-0"
    got = identify("secrets-manager", capa_name, CAPA, None)
    assert got is not None
    assert (got.format, got.cluster, got.machine) == ("capa", "c1", "m0")
    assert identify("secrets-manager", capa_name, OURS, None) is None


def test_identify_lets_an_untagged_ssm_name_through_on_its_shape() -> None:
    frag = identify("ssm", f"/cluster.x-k8s.io/ns/c1/m0/{TOKEN}/0", None, None)
    assert frag is not None
    assert frag.cluster == "c1"
    assert identify("ssm", f"/cluster.x-k8s.io/{uuid.uuid4()}/0", None, None) is not None


def test_a_malformed_instance_tag_ties_the_fragment_to_nothing() -> None:
    bad = Fragment("secrets-manager", "n", "native", NOW, {INSTANCE_TAG: "i-$(reboot)"})
    assert bad.instance_id is None


# --- decisions ----------------------------------------------------------------------------


def _frag(age: datetime.timedelta, fmt: str = "native", **tags: str) -> Fragment:
    return Fragment("secrets-manager", "n", fmt, NOW - age, tags)


def test_expiry_is_the_first_reason() -> None:
    frag = _frag(2 * HOUR, **{"sealboot.io/expires-at": "2029-12-31T23:00:00Z", INSTANCE_TAG: IID})
    assert decide(frag, now=NOW, states={IID: "terminated"}).reason == "expired"


def test_a_terminated_instance_releases_its_fragment() -> None:
    d = decide(_frag(HOUR, **{INSTANCE_TAG: IID}), now=NOW, states={IID: "shutting-down"})
    assert (d.delete, d.reason) == (True, "instance-terminated")


def test_an_unknown_instance_is_given_the_grace_period() -> None:
    young = _frag(datetime.timedelta(0), **{INSTANCE_TAG: IID})
    assert not decide(young, now=NOW, states={IID: None}).delete
    old = _frag(datetime.timedelta(seconds=DEFAULT_INSTANCE_GRACE), **{INSTANCE_TAG: IID})
    assert decide(old, now=NOW, states={IID: None}).reason == "instance-gone"


def test_a_stopped_instance_keeps_its_fragment() -> None:
    d = decide(_frag(48 * HOUR, **{INSTANCE_TAG: IID}), now=NOW, states={IID: "stopped"})
    assert (d.delete, d.detail) == (False, f"instance {IID} is stopped")


def test_older_than_counts_from_creation() -> None:
    assert not decide(_frag(HOUR), now=NOW, states={}, older_than=7200).delete
    assert decide(_frag(3 * HOUR), now=NOW, states={}, older_than=7200).reason == "older-than"


def test_a_capa_fragment_without_expiry_goes_after_a_day() -> None:
    assert not decide(_frag(23 * HOUR, "capa"), now=NOW, states={}).delete
    d = decide(_frag(25 * HOUR, "capa"), now=NOW, states={})
    assert d.reason == "older-than"
    assert "CAPA fragment without an expiry tag" in d.detail


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("30m", 1800), ("24h", 86400), ("7d", 604800), ("1h30m", 5400), ("3600", 3600)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "-5m", "5 parsecs", "1y", "h", "\u0663\u0660m"])
def test_parse_duration_refuses_nonsense(text: str) -> None:
    with pytest.raises(InputError):
        parse_duration(text)


def test_progress_bar_draws_on_one_line() -> None:
    stream = io.StringIO()
    bar = ProgressBar(stream, width=10)
    bar(0, 4)
    bar(2, 4)
    bar(4, 4)
    bar.close()
    assert stream.getvalue() == (
        "\rsweep [..........] 0/4\rsweep [#####.....] 2/4\rsweep [##########] 4/4\n"
    )


# --- what a sweep does with each fragment -------------------------------------------------------


def _listed(name: str, expires: str) -> dict[str, object]:
    return {"Name": name, "Tags": _tags(**{"sealboot.io/expires-at": expires}),
            "CreatedDate": NOW - HOUR}  # fmt: skip


EXPIRED_PAGE = {"SecretList": [_listed(NAMES[0], "2029-01-01T00:00:00Z")]}


def _statuses(report: SweepReport) -> dict[str, str]:
    return {o.decision.fragment.name: o.status for o in report.outcomes}


def test_expired_secrets_are_deleted_and_live_ones_kept() -> None:
    page = {"SecretList": [_listed(NAMES[0], "2029-01-01T00:00:00Z"),
                           _listed(NAMES[1], "2031-01-01T00:00:00Z")]}  # fmt: skip
    with stubbed("secretsmanager") as (client, stub):
        stub.add_response("list_secrets", page)
        stub.add_response(
            "delete_secret", {}, {"SecretId": NAMES[0], "ForceDeleteWithoutRecovery": True}
        )
        report = sweep(secrets=client, now=NOW)
    assert _statuses(report) == {NAMES[0]: "deleted", NAMES[1]: "kept"}


def test_a_dry_run_makes_no_delete_call() -> None:
    with stubbed("secretsmanager") as (client, stub):
        stub.add_response("list_secrets", EXPIRED_PAGE)
        report = sweep(secrets=client, now=NOW, dry_run=True)
    assert _statuses(report) == {NAMES[0]: "would-delete"}


def _sweep_one_expired_secret(delete_error: str) -> SweepReport:
    """A sweep of one expired secret whose DeleteSecret is answered with *delete_error*."""
    with stubbed("secretsmanager") as (client, stub):
        stub.add_response("list_secrets", EXPIRED_PAGE)
        stub.add_client_error("delete_secret", delete_error, http_status_code=400)
        return sweep(secrets=client, now=NOW)


def test_a_secret_gone_meanwhile_is_already_gone() -> None:
    report = _sweep_one_expired_secret("ResourceNotFoundException")
    assert _statuses(report) == {NAMES[0]: "already-gone"}


def test_a_denied_delete_is_a_failed_outcome_marked_denied() -> None:
    report = _sweep_one_expired_secret("AccessDeniedException")
    (failed,) = report.failed
    assert failed.denied
    assert "AccessDeniedException" in str(failed.error)


def test_an_ssm_name_is_decided_on_the_tags_read_for_it() -> None:
    listing = {"Parameters": [{"Name": PARAMS[0], "LastModifiedDate": NOW - HOUR}]}
    tags = {"TagList": _tags(**{"sealboot.io/expires-at": "2029-01-01T00:00:00Z"})}
    with stubbed("ssm") as (client, stub):
        stub.add_response("describe_parameters", listing)
        stub.add_response("list_tags_for_resource", tags,
                          {"ResourceType": "Parameter", "ResourceId": PARAMS[0]})  # fmt: skip
        stub.add_response("delete_parameters", {"DeletedParameters": PARAMS[:1]},
                          {"Names": PARAMS[:1]})  # fmt: skip
        report = sweep(ssm=client, now=NOW)
    assert _statuses(report) == {PARAMS[0]: "deleted"}


def test_an_instance_tag_needs_an_ec2_client() -> None:
    listed = _listed(NAMES[0], "2031-01-01T00:00:00Z")
    listed["Tags"] = _tags(**{"sealboot.io/expires-at": "2031-01-01T00:00:00Z", INSTANCE_TAG: IID})
    with stubbed("secretsmanager") as (client, stub):
        stub.add_response("list_secrets", {"SecretList": [listed]})
        with pytest.raises(InputError, match="EC2 client"):
            sweep(secrets=client, now=NOW)
