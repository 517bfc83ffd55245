"""Find fragments that nobody will fetch any more and delete them.

Example::

    >>> report = sweep(secrets=aws_client("secretsmanager", region="eu-west-1", endpoint_url=None),
    ...                ec2=aws_client("ec2", region="eu-west-1", endpoint_url=None))
    >>> report.counts()["deleted"]
    0

A fragment is *ours* when its name has the sealboot or CAPA shape under the root and it carries
the tags seal (or a stock CAPA controller) writes; anything else under the root is left alone.
Which of ours are deleted, and why, is decided in sealboot.decide. Throttling and 5xx are
retried by botocore (the clients' retry configuration); nothing here retries on top.
"""

from __future__ import annotations

import datetime
import logging
from typing import Callable

from sealboot.aws import Client
from sealboot.decide import DEFAULT_CAPA_MAX_AGE, DEFAULT_INSTANCE_GRACE, Decision, decide
from sealboot.delete import delete_fragments
from sealboot.errors import AccessDenied, InputError
from sealboot.fragments import Fragment, utc
from sealboot.instances import instance_states
from sealboot.listing import list_fragments
from sealboot.names import component
from sealboot.report import Outcome, SweepReport
from sealboot_agent.stores import STORES
from sealboot_agent.wire import BACKEND_SECRETS_MANAGER, BACKEND_SSM

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
_ORDER = {"failed": 0, "deleted": 1, "already-gone": 1, "would-delete": 1, "kept": 2}


def _execute(
    report: SweepReport,
    doomed: list[Decision],
    clients: dict[str, Client],
    progress: Progress | None,
) -> None:
    done = 0
    total = len(doomed)

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, total)

    by_backend: dict[str, dict[str, Decision]] = {}
    for d in doomed:
        by_backend.setdefault(d.fragment.backend, {})[d.fragment.name] = d
    for backend, mine in by_backend.items():
        result = delete_fragments(STORES[backend], clients[backend], list(mine), progress=tick)
        for name in result.deleted:
            report.outcomes.append(Outcome(mine[name], "deleted"))
        for name in result.already_gone:
            report.outcomes.append(Outcome(mine[name], "already-gone"))
        for name, err in result.failed.items():
            denied = isinstance(err, AccessDenied)
            report.outcomes.append(Outcome(mine[name], "failed", error=err.message, denied=denied))


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
    now = utc(now) if now is not None else datetime.datetime.now(datetime.timezone.utc)
    clients: dict[str, Client] = {}
    if secrets is not None:
        clients[BACKEND_SECRETS_MANAGER] = secrets
    if ssm is not None:
        clients[BACKEND_SSM] = ssm
    report = SweepReport(now=now, dry_run=dry_run, backends=tuple(clients))
    fragments: list[Fragment] = []
    for backend, client in clients.items():
        found, ignored = list_fragments(
            STORES[backend], client, namespace=namespace, cluster=cluster, page_size=page_size
        )
        fragments += found
        report.ignored += ignored
    ids = {f.instance_id for f in fragments if f.instance_id is not None}
    states: dict[str, str | None] = {}
    if ids:
        if ec2 is None:
            raise InputError("fragments are tied to instances; sweep needs an EC2 client")
        states = instance_states(ec2, ids)
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
    report.outcomes.extend(Outcome(d, "kept") for d in decisions if not d.delete)
    if dry_run:
        report.outcomes.extend(Outcome(d, "would-delete") for d in doomed)
    else:
        _execute(report, doomed, clients, progress)
    report.outcomes.sort(
        key=lambda o: (_ORDER[o.status], o.decision.fragment.backend, o.decision.fragment.name)
    )
    for o in report.outcomes:
        if o.status != "kept":
            log.debug("%s %s (%s)", o.status, o.decision.fragment.name, o.decision.detail)
    return report
