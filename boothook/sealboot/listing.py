"""List the fragments in a store: ListSecrets, or DescribeParameters plus each one's tags.

Example::

    >>> found, ignored = list_secret_fragments(client, cluster="c1")
"""

from __future__ import annotations

import logging
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from sealboot.aws import Client, error_code, wrap
from sealboot.errors import AccessDenied
from sealboot.fragments import Fragment, identify, in_scope, utc_or_none
from sealboot.names import CLUSTER_TAG_PREFIX, default_root, tag_map
from sealboot_agent.wire import BACKEND_SECRETS_MANAGER, BACKEND_SSM, FORMAT_CAPA

log = logging.getLogger(__name__)


def list_secret_fragments(
    client: Client,
    *,
    namespace: str | None = None,
    cluster: str | None = None,
    root: str | None = None,
    page_size: int = 100,
) -> tuple[list[Fragment], int]:
    """Every Secrets Manager fragment in scope (ListSecrets, paginated), and how many others
    under the root were ignored."""
    root = root or default_root(BACKEND_SECRETS_MANAGER)
    filters: list[dict[str, Any]] = [{"Key": "name", "Values": [root.rstrip("/") + "/"]}]
    if cluster is not None:
        filters.append({"Key": "tag-key", "Values": [CLUSTER_TAG_PREFIX + cluster]})
    found: list[Fragment] = []
    ignored = 0
    pages = client.get_paginator("list_secrets").paginate(
        Filters=filters, PaginationConfig={"PageSize": page_size}
    )
    try:
        for page in pages:
            for item in page.get("SecretList", []):
                frag = identify(
                    BACKEND_SECRETS_MANAGER,
                    item["Name"],
                    tag_map(item.get("Tags")),
                    utc_or_none(item.get("CreatedDate")),
                    root=root,
                )
                if frag is None:
                    ignored += 1
                elif in_scope(frag, namespace, cluster):
                    found.append(frag)
    except (ClientError, BotoCoreError) as exc:
        raise wrap(exc, "listing secrets") from exc
    return found, ignored


def list_parameter_fragments(
    client: Client,
    *,
    namespace: str | None = None,
    cluster: str | None = None,
    root: str | None = None,
    page_size: int = 50,
) -> tuple[list[Fragment], int]:
    """Every SSM fragment in scope (DescribeParameters under the root, recursive, paginated;
    tags by ListTagsForResource), and how many others under the root were ignored."""
    root = root or default_root(BACKEND_SSM)
    candidates: list[Fragment] = []
    ignored = 0
    pages = client.get_paginator("describe_parameters").paginate(
        ParameterFilters=[{"Key": "Path", "Option": "Recursive", "Values": [root.rstrip("/")]}],
        PaginationConfig={"PageSize": page_size},
    )
    try:
        for page in pages:
            for item in page.get("Parameters", []):
                frag = identify(
                    BACKEND_SSM,
                    item["Name"],
                    None,
                    utc_or_none(item.get("LastModifiedDate")),
                    root=root,
                )
                if frag is None:
                    ignored += 1
                elif in_scope(frag, namespace, cluster):
                    candidates.append(frag)
    except (ClientError, BotoCoreError) as exc:
        raise wrap(exc, "listing parameters") from exc
    found = []
    for cand in candidates:
        try:
            resp = client.list_tags_for_resource(ResourceType="Parameter", ResourceId=cand.name)
        except (ClientError, BotoCoreError) as exc:
            if isinstance(exc, ClientError) and error_code(exc) == "InvalidResourceId":
                continue  # deleted since it was listed
            err = wrap(exc, f"reading the tags of {cand.name}")
            if isinstance(err, AccessDenied) and cand.format == FORMAT_CAPA:
                # A cluster-scoped controller may not read other names; a CAPA name says no
                # cluster, so it may be anyone's: leave it alone rather than fail the sweep.
                log.warning("%s; left alone", err.message)
                ignored += 1
                continue
            raise err from exc
        frag = identify(
            BACKEND_SSM, cand.name, tag_map(resp.get("TagList")), cand.created, root=root
        )
        if frag is None:
            ignored += 1
        elif in_scope(frag, namespace, cluster):
            found.append(frag)
    return found, ignored
