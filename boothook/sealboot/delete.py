"""Delete fragments (idempotent): a machine's, once its node has joined, and sweep's and a
failed seal's, through the one deletion here.

Example::

    >>> delete(manifest)
    ['aws.cluster.x-k8s.io/default/c1/m1/...-0']
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Callable

from botocore.exceptions import BotoCoreError, ClientError

from sealboot.aws import Client, aws_client, wrap
from sealboot.errors import NOTHING_DELETED, AwsError, SealbootError
from sealboot_agent.stores import ALREADY_GONE, DELETED, STORES, Store
from sealboot_agent.wire import Manifest

log = logging.getLogger(__name__)


@dataclass
class Deletion:
    """What one pass over some fragments did: each name is in exactly one of the three."""

    deleted: list[str] = field(default_factory=list)
    already_gone: list[str] = field(default_factory=list)
    failed: dict[str, SealbootError] = field(default_factory=dict)

    @property
    def gone(self) -> list[str]:
        return self.deleted + self.already_gone


def delete_fragments(
    store: Store,
    client: Client,
    names: Sequence[str],
    *,
    progress: Callable[[int], None] | None = None,
) -> Deletion:
    """Delete every name (force, no recovery window) and record how each went; never raises
    for an AWS failure, so one denied or throttled name does not keep the others.

    Example::

        >>> delete_fragments(STORES["ssm"], client, ["/cluster.x-k8s.io/u/0"]).gone
        ['/cluster.x-k8s.io/u/0']
    """
    out = Deletion()
    for batch in store.batches(names, store.delete_max):
        started = time.monotonic()
        try:
            result = store.delete(client, batch)
        except (ClientError, BotoCoreError) as exc:
            out.failed.update(dict.fromkeys(batch, wrap(exc, f"deleting {batch[0]}")))
            result = {}
        elapsed = (time.monotonic() - started) * 1000
        for name in batch:
            if result.get(name) == DELETED:
                log.debug("deleted %s in %.0f ms (%s)", name, elapsed, store.delete_operation)
                out.deleted.append(name)
            elif result.get(name) == ALREADY_GONE:
                out.already_gone.append(name)
            elif name not in out.failed:
                out.failed[name] = AwsError(f"deleting {name}: AWS did not report it")
        if progress is not None:
            progress(len(batch))
    return out


def delete(
    manifest: Manifest,
    *,
    client: Client | None = None,
    endpoint_url: str | None = None,
    region: str | None = None,
) -> list[str]:
    """Delete every fragment the manifest names; return the names that are now gone.

    On failure the error's ``outcome`` says which fragments are gone and which are left.
    """
    store = STORES[manifest.backend]
    if client is None:
        try:
            client = aws_client(
                store.service,
                region=region or manifest.region,
                endpoint_url=endpoint_url or manifest.endpoint_url,
                use_fips=manifest.use_fips,
            )
        except SealbootError as exc:
            exc.outcome = NOTHING_DELETED
            raise
    result = delete_fragments(store, client, manifest.fragments)
    for name in result.deleted:
        log.info("%s: deleted", name)
    for name in result.already_gone:
        log.info("%s: already gone", name)
    if result.failed:
        err = next(iter(result.failed.values()))
        err.outcome = _outcome(manifest.fragments, result.gone)
        raise err
    gone = set(result.gone)
    return [n for n in manifest.fragments if n in gone]


def _outcome(names: Sequence[str], gone: list[str]) -> str:
    """What a failed delete left behind, and that running it again is safe."""
    left = [n for n in names if n not in gone]
    if not gone:
        head = f"{NOTHING_DELETED}: all {len(names)} fragment(s) are still there"
    else:
        head = f"{len(gone)} of {len(names)} fragment(s) are gone, {len(left)} left"
    # The manifest still names them all; a few are enough to recognise.
    shown = ", ".join(left[:3]) + (f", and {len(left) - 3} more" if len(left) > 3 else "")
    return f"{head} ({shown}); run the same 'sealboot delete' again once fixed"
