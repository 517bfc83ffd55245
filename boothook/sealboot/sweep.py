"""Find fragments that nobody will fetch any more and delete them; tie fragments to instances.

Example::

    >>> report = sweep(secrets=aws_client("secretsmanager", region="eu-west-1", endpoint_url=None),
    ...                ec2=aws_client("ec2", region="eu-west-1", endpoint_url=None))
    >>> report.counts()["deleted"]
    0

A fragment is *ours* when its name has the sealboot or CAPA shape under the root and it carries
the tags seal (or a stock CAPA controller) writes; anything else under the root is left alone.
A fragment is deleted when any of these holds (first match is the reason reported):

1. ``expired``: its ``sealboot.io/expires-at`` tag is in the past;
2. ``instance-terminated``: its ``sealboot.io/instance-id`` tag names an instance that EC2
   reports as ``shutting-down`` or ``terminated``;
3. ``instance-gone``: that instance is unknown to EC2 (``InvalidInstanceID.NotFound``, or absent
   from a filtered DescribeInstances) and the fragment is older than the grace period (EC2 is
   eventually consistent right after RunInstances);
4. ``older-than``: it was created longer ago than ``--older-than``, or, for a CAPA fragment
   without an expiry tag, longer ago than the CAPA default (24 h).

Everything else is kept: unexpired and either tied to a live instance or not tied to one yet.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import logging
import random
import re
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TextIO

from botocore.exceptions import BotoCoreError, ClientError

from sealboot.aws import Client, aws_client, error_code, wrap
from sealboot.errors import AccessDenied, AwsError, InputError
from sealboot.seal import CLUSTER_TAG, EXPIRY_TAG, FORMAT_TAG, NAMESPACE_TAG, component
from sealboot_agent.wire import (
    BACKEND_SECRETS_MANAGER,
    BACKEND_SSM,
    BACKENDS,
    DEFAULT_ROOT,
    DEFAULT_SSM_ROOT,
    SSM_BATCH_MAX,
    Manifest,
    WireError,
)

log = logging.getLogger(__name__)

CLUSTER_TAG_PREFIX = CLUSTER_TAG.format(cluster="")
# Ties a machine's fragments to its instance: written by tag_instance (after RunInstances).
INSTANCE_TAG = "sealboot.io/instance-id"

BACKEND_ALL = "all"
DEFAULT_CAPA_MAX_AGE = 24 * 3600.0
DEFAULT_INSTANCE_GRACE = 15 * 60.0
GONE_STATES = frozenset({"shutting-down", "terminated"})
# DescribeInstances takes at most 200 values per filter.
_EC2_FILTER_MAX = 200
_THROTTLED = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "RequestThrottled",
        "RequestThrottledException",
        "SlowDown",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "InternalServiceError",
        "InternalFailure",
        "InternalServerError",
    }
)
_INSTANCE_ID_RE = re.compile(r"^i-[0-9a-f]{8}([0-9a-f]{9})?\Z")
_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_SM_NATIVE_RE = re.compile(r"^([^/]+)/([^/]+)/([^/]+)/([A-Za-z0-9]+)-(\d+)\Z")
_SM_CAPA_RE = re.compile(rf"^{_UUID}-(\d+)\Z")
_SSM_NATIVE_RE = re.compile(r"^([^/]+)/([^/]+)/([^/]+)/([A-Za-z0-9]+)/(\d+)\Z")
_SSM_CAPA_RE = re.compile(rf"^{_UUID}/(\d+)\Z")
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

Progress = Callable[[int, int], None]


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``90s``, ``30m``, ``24h``, ``7d``, ``1h30m`` or ``3600``.

    Example::

        >>> parse_duration("1h30m")
        5400.0
    """
    raw = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", raw):
        seconds = float(raw)
    elif raw and _DURATION_RE.sub("", raw) == "":
        seconds = sum(float(n) * _UNITS[u] for n, u in _DURATION_RE.findall(raw))
    else:
        raise InputError(f"duration {text!r} is not like 90s, 30m, 24h, 7d or 1h30m")
    if seconds <= 0:
        raise InputError(f"duration {text!r} must be positive")
    return seconds


def _utc(value: datetime.datetime) -> datetime.datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=datetime.timezone.utc)
    return value.astimezone(datetime.timezone.utc)


def _iso(value: datetime.datetime | None) -> str | None:
    return None if value is None else _utc(value).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(text: str) -> datetime.datetime | None:
    try:
        parsed = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return _utc(parsed)


@dataclass(frozen=True)
class Fragment:
    """One stored fragment that sealboot (or a stock CAPA controller) wrote."""

    backend: str
    name: str
    format: str  # "native" or "capa"
    created: datetime.datetime | None
    tags: Mapping[str, str]
    namespace: str | None = None
    cluster: str | None = None
    machine: str | None = None

    @property
    def expires_at(self) -> datetime.datetime | None:
        raw = self.tags.get(EXPIRY_TAG)
        return _parse_time(raw) if raw else None

    @property
    def instance_id(self) -> str | None:
        raw = self.tags.get(INSTANCE_TAG)
        return raw if raw and _INSTANCE_ID_RE.match(raw) else None


@dataclass(frozen=True)
class Decision:
    """What sweep does with a fragment, and why."""

    fragment: Fragment
    delete: bool
    reason: str  # expired | instance-terminated | instance-gone | older-than | live
    detail: str


@dataclass
class Outcome:
    decision: Decision
    status: str  # deleted | would-delete | already-gone | failed | kept
    error: str | None = None
    denied: bool = False

    def to_dict(self) -> dict[str, Any]:
        f = self.decision.fragment
        out: dict[str, Any] = {
            "backend": f.backend,
            "name": f.name,
            "format": f.format,
            "namespace": f.namespace,
            "cluster": f.cluster,
            "machine": f.machine,
            "instance_id": f.instance_id,
            "created": _iso(f.created),
            "expires_at": _iso(f.expires_at),
            "action": self.status,
            "reason": self.decision.reason,
            "detail": self.decision.detail,
        }
        if self.error is not None:
            out["error"] = self.error
        return out


@dataclass
class SweepReport:
    """Everything one sweep found and did; ``to_dict()`` is the ``--json`` output."""

    now: datetime.datetime
    dry_run: bool
    backends: tuple[str, ...]
    outcomes: list[Outcome] = field(default_factory=list)
    ignored: int = 0

    def counts(self) -> dict[str, int]:
        keys = ("deleted", "would-delete", "already-gone", "failed", "kept")
        out = {k: 0 for k in keys}
        for o in self.outcomes:
            out[o.status] += 1
        out["ignored"] = self.ignored
        return out

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "now": _iso(self.now),
            "dry_run": self.dry_run,
            "backends": list(self.backends),
            "counts": self.counts(),
            "fragments": [o.to_dict() for o in self.outcomes],
        }

    def summary(self) -> str:
        """The human-readable report: one line per fragment acted on, then the counts."""
        lines = []
        width = max((len(o.status) for o in self.outcomes), default=0)
        for o in self.outcomes:
            if o.status == "kept":
                continue
            line = f"{o.status:<{width}}  {o.decision.fragment.name}  ({o.decision.detail})"
            if o.error:
                line += f": {o.error}"
            lines.append(line)
        c = self.counts()
        kept_reasons: dict[str, int] = {}
        for o in self.outcomes:
            if o.status == "kept":
                kept_reasons[o.decision.detail] = kept_reasons.get(o.decision.detail, 0) + 1
        for detail, n in sorted(kept_reasons.items()):
            lines.append(f"kept {n} fragment(s): {detail}")
        verb = f"would delete {c['would-delete']}" if self.dry_run else f"deleted {c['deleted']}"
        tail = f"sweep ({', '.join(self.backends)}): {verb}"
        if c["already-gone"]:
            tail += f", {c['already-gone']} already gone"
        tail += f", kept {c['kept']}, failed {c['failed']}"
        if self.dry_run:
            tail += " (dry run: nothing was deleted)"
        lines.append(tail)
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Retry:
    """Bounded full-jitter retries on throttling and 5xx, on top of botocore's own."""

    attempts: int = 6
    base: float = 0.5
    cap: float = 8.0
    deadline: float = 300.0
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic


def _call(retry: Retry, end: float, fn: Callable[[], Any], doing: str) -> Any:
    attempt = 0
    while True:
        try:
            return fn()
        except ClientError as exc:
            attempt += 1
            if error_code(exc) not in _THROTTLED or attempt >= retry.attempts:
                raise
            delay = random.uniform(0, min(retry.cap, retry.base * 2**attempt))  # noqa: S311
            if retry.clock() + delay > end:
                raise
            log.debug("%s: %s; retrying in %.2fs", doing, error_code(exc), delay)
            retry.sleep(delay)


def _tag_map(tags: Iterable[Mapping[str, str]] | None) -> dict[str, str]:
    return {t["Key"]: t.get("Value", "") for t in tags or ()}


def _clusters_in(tags: Mapping[str, str]) -> list[str]:
    return [k[len(CLUSTER_TAG_PREFIX) :] for k in tags if k.startswith(CLUSTER_TAG_PREFIX)]


def _is_sealboot(tags: Mapping[str, str]) -> bool:
    return EXPIRY_TAG in tags or FORMAT_TAG in tags


def identify(
    backend: str,
    name: str,
    tags: Mapping[str, str] | None,
    created: datetime.datetime | None,
    *,
    root: str | None = None,
) -> Fragment | None:
    """The Fragment for a stored name, or None when it is not one of ours.

    *tags* may be None for an SSM name whose tags are not read yet: then the name shape alone
    decides, and the caller must call again with the tags.

    Example::

        >>> identify("ssm", "/cluster.x-k8s.io/ns/c/m/tok/0", None, None).cluster
        'c'
    """
    ssm = backend == BACKEND_SSM
    root = (root or (DEFAULT_SSM_ROOT if ssm else DEFAULT_ROOT)).rstrip("/")
    if not name.startswith(root + "/"):
        return None
    rest = name[len(root) + 1 :]
    native = (_SSM_NATIVE_RE if ssm else _SM_NATIVE_RE).match(rest)
    capa = (_SSM_CAPA_RE if ssm else _SM_CAPA_RE).match(rest)
    known = tags if tags is not None else {}
    if native:
        if tags is not None and not _is_sealboot(known):
            return None
        ns, cluster, machine = native.group(1), native.group(2), native.group(3)
        return Fragment(backend, name, "native", created, known, ns, cluster, machine)
    if capa:
        clusters = _clusters_in(known)
        if tags is not None and not clusters:
            return None
        return Fragment(
            backend,
            name,
            "capa",
            created,
            known,
            known.get(NAMESPACE_TAG),
            clusters[0] if clusters else None,
            known.get("Name"),
        )
    return None


def _in_scope(f: Fragment, namespace: str | None, cluster: str | None) -> bool:
    if namespace is not None and f.namespace != namespace:
        return False
    if cluster is None:
        return True
    if f.format == "capa" and f.cluster is None:
        return True  # tags not read yet; decided once they are
    return f.cluster == cluster


def list_secret_fragments(
    client: Client,
    *,
    namespace: str | None = None,
    cluster: str | None = None,
    root: str = DEFAULT_ROOT,
    retry: Retry = Retry(),
    page_size: int = 100,
) -> tuple[list[Fragment], int]:
    """Every Secrets Manager fragment in scope (ListSecrets, paginated), and how many others
    under the root were ignored."""
    filters: list[dict[str, Any]] = [{"Key": "name", "Values": [root.rstrip("/") + "/"]}]
    if cluster is not None:
        filters.append({"Key": "tag-key", "Values": [CLUSTER_TAG_PREFIX + cluster]})
    end = retry.clock() + retry.deadline
    found: list[Fragment] = []
    ignored = 0
    token: str | None = None
    while True:
        kwargs: dict[str, Any] = {"Filters": filters, "MaxResults": page_size}
        if token:
            kwargs["NextToken"] = token
        try:
            page = _call(
                retry, end, functools.partial(client.list_secrets, **kwargs), "ListSecrets"
            )
        except (ClientError, BotoCoreError) as exc:
            raise wrap(exc, "listing secrets") from exc
        for item in page.get("SecretList", []):
            created = item.get("CreatedDate")
            frag = identify(
                BACKEND_SECRETS_MANAGER,
                item["Name"],
                _tag_map(item.get("Tags")),
                _utc(created) if isinstance(created, datetime.datetime) else None,
                root=root,
            )
            if frag is None:
                ignored += 1
            elif _in_scope(frag, namespace, cluster):
                found.append(frag)
        token = page.get("NextToken")
        if not token:
            return found, ignored


def list_parameter_fragments(
    client: Client,
    *,
    namespace: str | None = None,
    cluster: str | None = None,
    root: str = DEFAULT_SSM_ROOT,
    retry: Retry = Retry(),
    page_size: int = 50,
) -> tuple[list[Fragment], int]:
    """Every SSM fragment in scope (DescribeParameters under the root, recursive, paginated;
    tags by ListTagsForResource), and how many others under the root were ignored."""
    end = retry.clock() + retry.deadline
    path = root.rstrip("/")
    candidates: list[Fragment] = []
    ignored = 0
    token: str | None = None
    while True:
        kwargs: dict[str, Any] = {
            "ParameterFilters": [{"Key": "Path", "Option": "Recursive", "Values": [path]}],
            "MaxResults": page_size,
        }
        if token:
            kwargs["NextToken"] = token
        try:
            page = _call(
                retry,
                end,
                functools.partial(client.describe_parameters, **kwargs),
                "DescribeParameters",
            )
        except (ClientError, BotoCoreError) as exc:
            raise wrap(exc, "listing parameters") from exc
        for item in page.get("Parameters", []):
            modified = item.get("LastModifiedDate")
            frag = identify(
                BACKEND_SSM,
                item["Name"],
                None,
                _utc(modified) if isinstance(modified, datetime.datetime) else None,
                root=root,
            )
            if frag is None:
                ignored += 1
            elif _in_scope(frag, namespace, cluster):
                candidates.append(frag)
        token = page.get("NextToken")
        if not token:
            break
    found = []
    for cand in candidates:
        try:
            resp = _call(
                retry,
                end,
                functools.partial(
                    client.list_tags_for_resource, ResourceType="Parameter", ResourceId=cand.name
                ),
                "ListTagsForResource",
            )
        except (ClientError, BotoCoreError) as exc:
            if isinstance(exc, ClientError) and error_code(exc) == "InvalidResourceId":
                continue  # deleted since it was listed
            err = wrap(exc, f"reading the tags of {cand.name}")
            if isinstance(err, AccessDenied) and cand.format == "capa":
                # A cluster-scoped controller may not read other names; a CAPA name says no
                # cluster, so it may be anyone's: leave it alone rather than fail the sweep.
                log.warning("%s; left alone", err.message)
                ignored += 1
                continue
            raise err from exc
        frag = identify(
            BACKEND_SSM, cand.name, _tag_map(resp.get("TagList")), cand.created, root=root
        )
        if frag is None:
            ignored += 1
        elif _in_scope(frag, namespace, cluster):
            found.append(frag)
    return found, ignored


def instance_states(
    ec2: Client, instance_ids: Iterable[str], *, retry: Retry = Retry()
) -> dict[str, str | None]:
    """EC2 state name of each instance id; None for an instance EC2 does not know.

    Example::

        >>> instance_states(ec2, ["i-0123456789abcdef0"])
        {'i-0123456789abcdef0': None}
    """
    ids = sorted(set(instance_ids))
    states: dict[str, str | None] = {i: None for i in ids}
    end = retry.clock() + retry.deadline
    for start in range(0, len(ids), _EC2_FILTER_MAX):
        chunk = ids[start : start + _EC2_FILTER_MAX]
        token: str | None = None
        try:
            while True:
                # A filter, unlike InstanceIds, does not fail the whole call on one unknown id.
                kwargs: dict[str, Any] = {"Filters": [{"Name": "instance-id", "Values": chunk}]}
                if token:
                    kwargs["NextToken"] = token
                page = _call(
                    retry,
                    end,
                    functools.partial(ec2.describe_instances, **kwargs),
                    "DescribeInstances",
                )
                for reservation in page.get("Reservations", []):
                    for inst in reservation.get("Instances", []):
                        states[inst["InstanceId"]] = inst.get("State", {}).get("Name")
                token = page.get("NextToken")
                if not token:
                    break
        except ClientError as exc:
            if error_code(exc) != "InvalidInstanceID.NotFound":
                raise wrap(exc, "describing instances") from exc
            for iid in chunk:
                states[iid] = _one_state(ec2, iid, retry, end)
        except BotoCoreError as exc:
            raise wrap(exc, "describing instances") from exc
    return states


def _one_state(ec2: Client, iid: str, retry: Retry, end: float) -> str | None:
    try:
        page = _call(
            retry, end, lambda: ec2.describe_instances(InstanceIds=[iid]), "DescribeInstances"
        )
    except ClientError as exc:
        if error_code(exc) == "InvalidInstanceID.NotFound":
            return None
        raise wrap(exc, f"describing {iid}") from exc
    except BotoCoreError as exc:
        raise wrap(exc, f"describing {iid}") from exc
    for reservation in page.get("Reservations", []):
        for inst in reservation.get("Instances", []):
            state: str | None = inst.get("State", {}).get("Name")
            return state
    return None


def _age(f: Fragment, now: datetime.datetime) -> float | None:
    return None if f.created is None else (now - f.created).total_seconds()


def _human(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def decide(
    f: Fragment,
    *,
    now: datetime.datetime,
    states: Mapping[str, str | None],
    older_than: float | None = None,
    capa_max_age: float = DEFAULT_CAPA_MAX_AGE,
    instance_grace: float = DEFAULT_INSTANCE_GRACE,
) -> Decision:
    """Whether to delete fragment *f*, and why (see the module docstring for the rules).

    Example::

        >>> decide(frag, now=now, states={}).reason
        'live'
    """
    age = _age(f, now)
    expires = f.expires_at
    if expires is not None and expires <= now:
        return Decision(f, True, "expired", f"expired at {_iso(expires)}")
    iid = f.instance_id
    if iid is not None and iid in states:
        state = states[iid]
        if state in GONE_STATES:
            return Decision(f, True, "instance-terminated", f"instance {iid} is {state}")
        if state is None:
            if age is not None and age >= instance_grace:
                return Decision(f, True, "instance-gone", f"instance {iid} does not exist")
            return Decision(
                f, False, "live", f"instance {iid} not visible yet (within the grace period)"
            )
    if older_than is not None and age is not None and age >= older_than:
        return Decision(f, True, "older-than", f"created more than {_human(older_than)} ago")
    capa_untimed = f.format == "capa" and expires is None and older_than is None
    if capa_untimed and age is not None and age >= capa_max_age:
        return Decision(
            f,
            True,
            "older-than",
            f"CAPA fragment without an expiry tag, created more than {_human(capa_max_age)} ago",
        )
    if iid is not None and iid in states:
        return Decision(f, False, "live", f"instance {iid} is {states[iid]}")
    if expires is not None:
        return Decision(f, False, "live", "not expired")
    return Decision(f, False, "live", "young")


def _delete_secret(client: Client, name: str, retry: Retry, end: float) -> str:
    try:
        _call(
            retry,
            end,
            lambda: client.delete_secret(SecretId=name, ForceDeleteWithoutRecovery=True),
            "DeleteSecret",
        )
    except ClientError as exc:
        if error_code(exc) == "ResourceNotFoundException":
            return "already-gone"
        raise
    return "deleted"


def _delete_parameters(
    client: Client, names: Sequence[str], retry: Retry, end: float
) -> dict[str, str]:
    resp = _call(
        retry, end, lambda: client.delete_parameters(Names=list(names)), "DeleteParameters"
    )
    out = {n: "deleted" for n in resp.get("DeletedParameters", [])}
    out.update({n: "already-gone" for n in resp.get("InvalidParameters", [])})
    return out


def _execute(
    report: SweepReport,
    doomed: list[Decision],
    clients: Mapping[str, Client],
    retry: Retry,
    progress: Progress | None,
) -> None:
    end = retry.clock() + retry.deadline
    done = 0
    total = len(doomed)

    def tick(n: int = 1) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, total)

    def fail(d: Decision, exc: Exception) -> None:
        err = wrap(exc, f"deleting {d.fragment.name}")
        report.outcomes.append(
            Outcome(d, "failed", error=err.message, denied=isinstance(err, AccessDenied))
        )

    secrets = [d for d in doomed if d.fragment.backend == BACKEND_SECRETS_MANAGER]
    params = [d for d in doomed if d.fragment.backend == BACKEND_SSM]
    for d in secrets:
        try:
            status = _delete_secret(clients[BACKEND_SECRETS_MANAGER], d.fragment.name, retry, end)
        except (ClientError, BotoCoreError) as exc:
            fail(d, exc)
        else:
            report.outcomes.append(Outcome(d, status))
        tick()
    for start in range(0, len(params), SSM_BATCH_MAX):
        batch = params[start : start + SSM_BATCH_MAX]
        try:
            result = _delete_parameters(
                clients[BACKEND_SSM], [d.fragment.name for d in batch], retry, end
            )
        except (ClientError, BotoCoreError) as exc:
            for d in batch:
                fail(d, exc)
        else:
            for d in batch:
                got = result.get(d.fragment.name)
                if got is None:
                    report.outcomes.append(
                        Outcome(d, "failed", error="DeleteParameters did not report it")
                    )
                else:
                    report.outcomes.append(Outcome(d, got))
        tick(len(batch))


def sweep(
    *,
    secrets: Client | None = None,
    ssm: Client | None = None,
    ec2: Client | None = None,
    namespace: str | None = None,
    cluster: str | None = None,
    older_than: float | None = None,
    dry_run: bool = False,
    now: datetime.datetime | None = None,
    capa_max_age: float = DEFAULT_CAPA_MAX_AGE,
    instance_grace: float = DEFAULT_INSTANCE_GRACE,
    retry: Retry = Retry(),
    progress: Progress | None = None,
    page_size: int | None = None,
) -> SweepReport:
    """Find the fragments in the given stores (a client per backend) and delete the dead ones.

    Example::

        >>> sweep(secrets=sm, ec2=ec2, cluster="c1", namespace="default", dry_run=True).counts()
        {'deleted': 0, 'would-delete': 2, 'already-gone': 0, 'failed': 0, 'kept': 1, 'ignored': 0}
    """
    if secrets is None and ssm is None:
        raise InputError("sweep needs at least one backend client")
    namespace, cluster = component("namespace", namespace), component("cluster", cluster)
    now = _utc(now) if now is not None else datetime.datetime.now(datetime.timezone.utc)
    clients: dict[str, Client] = {}
    if secrets is not None:
        clients[BACKEND_SECRETS_MANAGER] = secrets
    if ssm is not None:
        clients[BACKEND_SSM] = ssm
    report = SweepReport(now=now, dry_run=dry_run, backends=tuple(clients))
    fragments: list[Fragment] = []
    if secrets is not None:
        found, ignored = list_secret_fragments(
            secrets, namespace=namespace, cluster=cluster, retry=retry, page_size=page_size or 100
        )
        fragments += found
        report.ignored += ignored
    if ssm is not None:
        found, ignored = list_parameter_fragments(
            ssm, namespace=namespace, cluster=cluster, retry=retry, page_size=page_size or 50
        )
        fragments += found
        report.ignored += ignored
    ids = {f.instance_id for f in fragments if f.instance_id is not None}
    states: dict[str, str | None] = {}
    if ids:
        if ec2 is None:
            raise InputError("fragments are tied to instances; sweep needs an EC2 client")
        states = instance_states(ec2, ids, retry=retry)
    decisions = [
        decide(
            f,
            now=now,
            states=states,
            older_than=older_than,
            capa_max_age=capa_max_age,
            instance_grace=instance_grace,
        )
        for f in sorted(fragments, key=lambda f: (f.backend, f.name))
    ]
    doomed = [d for d in decisions if d.delete]
    for d in decisions:
        if not d.delete:
            report.outcomes.append(Outcome(d, "kept"))
    if dry_run:
        report.outcomes.extend(Outcome(d, "would-delete") for d in doomed)
    else:
        _execute(report, doomed, clients, retry, progress)
    order = {"failed": 0, "deleted": 1, "already-gone": 1, "would-delete": 1, "kept": 2}
    report.outcomes.sort(
        key=lambda o: (order[o.status], o.decision.fragment.backend, o.decision.fragment.name)
    )
    for o in report.outcomes:
        if o.status != "kept":
            log.debug("%s %s (%s)", o.status, o.decision.fragment.name, o.decision.detail)
    return report


def tag_instance(manifest: Manifest, instance_id: str, client: Client) -> list[str]:
    """Tag every fragment of *manifest* with ``sealboot.io/instance-id``; return the names.

    Run it right after RunInstances, so that sweep deletes the fragments once the instance is
    terminated or gone, even if nobody ever boots it or runs ``sealboot delete``.

    Example::

        >>> tag_instance(manifest, "i-0123456789abcdef0", client)
        ['aws.cluster.x-k8s.io/default/c1/m1/...-0']
    """
    if not _INSTANCE_ID_RE.match(instance_id):
        raise InputError(f"{instance_id!r} is not an EC2 instance id (i-0123456789abcdef0)")
    tags = [{"Key": INSTANCE_TAG, "Value": instance_id}]
    done = []
    for name in manifest.fragments:
        try:
            if manifest.backend == BACKEND_SSM:
                client.add_tags_to_resource(ResourceType="Parameter", ResourceId=name, Tags=tags)
            else:
                client.tag_resource(SecretId=name, Tags=tags)
        except (ClientError, BotoCoreError) as exc:
            raise wrap(exc, f"tagging {name} with {INSTANCE_TAG}={instance_id}") from exc
        done.append(name)
    return done


class ProgressBar:
    """A one-line progress bar for a terminal: ``sweep [#####.....] 12/40``."""

    def __init__(self, stream: TextIO, label: str = "sweep", width: int = 30):
        self.stream = stream
        self.label = label
        self.width = width
        self.drawn = False

    def __call__(self, done: int, total: int) -> None:
        filled = self.width if total == 0 else self.width * done // total
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\r{self.label} [{bar}] {done}/{total}")
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def add_parser(subparsers: Any) -> None:
    """Register ``sealboot sweep`` on *subparsers* (an argparse subparsers object)."""
    p = subparsers.add_parser(
        "sweep",
        help="delete fragments nobody will fetch: expired, or their instance is gone",
        description="Find sealboot and CAPA-format fragments by name and tag; delete those "
        "past their expiry tag, older than --older-than, or whose instance is terminated "
        "or gone. Keeps the rest.",
    )
    p.add_argument("--cluster", help="only this cluster's fragments")
    p.add_argument("--namespace", help="only this namespace's fragments")
    p.add_argument(
        "--older-than",
        metavar="DURATION",
        help="also delete fragments created longer ago than this (90s, 30m, 24h, 7d); "
        "CAPA fragments without an expiry tag default to 24h",
    )
    p.add_argument("--dry-run", action="store_true", help="list what would be deleted")
    p.add_argument("--json", action="store_true", help="print a JSON report on stdout")
    p.add_argument("--region", help="AWS region [env AWS_REGION, AWS_DEFAULT_REGION]")
    p.add_argument(
        "--endpoint-url",
        help="endpoint of the fragment store (VPC endpoint, test stack) "
        "[env SEALBOOT_ENDPOINT_URL]; EC2 honours AWS_ENDPOINT_URL_EC2",
    )
    p.add_argument(
        "--backend",
        choices=(*BACKENDS, BACKEND_ALL),
        default=BACKEND_SECRETS_MANAGER,
        help="which store to sweep (default: secrets-manager)",
    )
    p.add_argument("--use-fips", action="store_true", help="use the FIPS endpoints")


def run(args: argparse.Namespace, env: Mapping[str, str], stdout: TextIO, stderr: TextIO) -> int:
    """Run ``sealboot sweep`` with parsed arguments; print the report; return the exit code.

    Raises AwsError (exit 4) or AccessDenied (exit 5) after printing the report when some
    fragments could not be deleted.
    """
    region = args.region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if not region:
        raise InputError("no region: pass --region or set AWS_REGION")
    endpoint = args.endpoint_url or env.get("SEALBOOT_ENDPOINT_URL")
    older_than = parse_duration(args.older_than) if args.older_than else None
    fips = bool(getattr(args, "use_fips", False))
    backends = BACKENDS if args.backend == BACKEND_ALL else (args.backend,)

    def client(service: str, endpoint_url: str | None) -> Client:
        return aws_client(service, region=region, endpoint_url=endpoint_url, use_fips=fips)

    bar = ProgressBar(stderr) if _isatty(stderr) else None
    try:
        report = sweep(
            secrets=client("secretsmanager", endpoint)
            if BACKEND_SECRETS_MANAGER in backends
            else None,
            ssm=client("ssm", endpoint) if BACKEND_SSM in backends else None,
            ec2=client("ec2", None),
            namespace=args.namespace,
            cluster=args.cluster,
            older_than=older_than,
            dry_run=args.dry_run,
            progress=bar,
        )
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
    else:
        stdout.write(report.summary())
    failed = report.failed
    if failed:
        err_cls = AccessDenied if any(o.denied for o in failed) else AwsError
        raise err_cls(
            f"{len(failed)} fragment(s) could not be deleted; first: {failed[0].error}",
            hint="grant the actions in 'sealboot policy --role controller' and run sweep again",
        )
    return 0


def add_tag_instance_parser(subparsers: Any) -> None:
    """Register ``sealboot tag-instance MANIFEST --instance-id ID`` on *subparsers*."""
    p = subparsers.add_parser(
        "tag-instance",
        help="tie a manifest's fragments to the instance launched with them (for sweep)",
    )
    p.add_argument("manifest", metavar="MANIFEST", help="manifest JSON file, or -")
    p.add_argument("--instance-id", required=True, help="the instance RunInstances returned")
    p.add_argument("--region", help="AWS region (default: the manifest's)")
    p.add_argument("--endpoint-url", help="endpoint (default: the manifest's)")


def run_tag_instance(
    args: argparse.Namespace, env: Mapping[str, str], stdout: TextIO, stderr: TextIO
) -> int:
    """Run ``sealboot tag-instance``; print the tagged names on stdout."""
    try:
        text = sys.stdin.read() if args.manifest == "-" else Path(args.manifest).read_text()
        manifest = Manifest.from_json(text)
    except OSError as exc:
        raise InputError(f"cannot read {args.manifest}: {exc.strerror}") from exc
    except (WireError, UnicodeDecodeError) as exc:
        raise InputError(f"{args.manifest}: {exc}") from exc
    client = aws_client(
        "ssm" if manifest.backend == BACKEND_SSM else "secretsmanager",
        region=args.region or manifest.region or env.get("AWS_REGION"),
        endpoint_url=args.endpoint_url or env.get("SEALBOOT_ENDPOINT_URL") or manifest.endpoint_url,
        use_fips=manifest.use_fips,
    )
    for name in tag_instance(manifest, args.instance_id, client):
        stdout.write(name + "\n")
    return 0


def fragments_of(report: SweepReport, status: str) -> list[str]:
    """Names of the fragments with outcome *status* (``deleted``, ``kept``, ...)."""
    return [o.decision.fragment.name for o in report.outcomes if o.status == status]
