"""List the fragments in a store (through its Store: ListSecrets, or DescribeParameters plus
each name's tags), keeping those that are ours and in scope.

Example::

    >>> found, ignored = list_fragments(STORES["secrets-manager"], client, cluster="c1")
"""

from __future__ import annotations

import logging

from botocore.exceptions import BotoCoreError, ClientError

from sealboot.aws import Client, wrap
from sealboot.errors import AccessDenied
from sealboot.fragments import Fragment, identify, in_scope, utc_or_none
from sealboot.names import CLUSTER_TAG_PREFIX, default_root
from sealboot_agent.stores import Store
from sealboot_agent.wire import FORMAT_CAPA

log = logging.getLogger(__name__)


def list_fragments(
    store: Store,
    client: Client,
    *,
    namespace: str | None = None,
    cluster: str | None = None,
    root: str | None = None,
    page_size: int | None = None,
) -> tuple[list[Fragment], int]:
    """Every fragment of ours in scope under the root, and how many others there were ignored.

    Example::

        >>> list_fragments(STORES["ssm"], ssm, cluster="c1")[1]
        0
    """
    root = root or default_root(store.backend)
    tag_key = None if cluster is None else CLUSTER_TAG_PREFIX + cluster
    pages = {} if page_size is None else {"page_size": page_size}
    found: list[Fragment] = []
    untagged: list[Fragment] = []
    ignored = 0
    try:
        for item in store.list_fragments(client, root, tag_key=tag_key, **pages):
            created = utc_or_none(item.created)
            frag = identify(store.backend, item.name, item.tags, created, root=root)
            if frag is None:
                ignored += 1
            elif in_scope(frag, namespace, cluster):
                (found if item.tags is not None else untagged).append(frag)
    except (ClientError, BotoCoreError) as exc:
        raise wrap(exc, f"listing the {store.service} fragments under {root}") from exc
    for cand in untagged:  # the listing carried no tags (SSM): the name shape let these in
        try:
            tags = store.tags(client, cand.name)
        except (ClientError, BotoCoreError) as exc:
            err = wrap(exc, f"reading the tags of {cand.name}")
            if isinstance(err, AccessDenied) and cand.format == FORMAT_CAPA:
                # A cluster-scoped controller may not read other names; a CAPA name says no
                # cluster, so it may be anyone's: leave it alone rather than fail the sweep.
                log.warning("%s; left alone", err.message)
                ignored += 1
                continue
            raise err from exc
        if tags is None:
            continue  # deleted since it was listed
        frag = identify(store.backend, cand.name, tags, cand.created, root=root)
        if frag is None:
            ignored += 1
        elif in_scope(frag, namespace, cluster):
            found.append(frag)
    return found, ignored
