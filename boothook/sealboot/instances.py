"""EC2 instance states for sweep: which instances a fragment's instance-id tag names are gone.

Example::

    >>> instance_states(ec2, ["i-0123456789abcdef0"])
    {'i-0123456789abcdef0': None}
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from sealboot.aws import Client, wrap
from sealboot_agent.stores import error_code

# DescribeInstances takes at most 200 values per filter.
_EC2_FILTER_MAX = 200
_NOT_FOUND = "InvalidInstanceID.NotFound"


def instance_states(ec2: Client, instance_ids: Iterable[str]) -> dict[str, str | None]:
    """EC2 state name of each instance id; None for an instance EC2 does not know.

    Example::

        >>> instance_states(ec2, ["i-0123456789abcdef0"])
        {'i-0123456789abcdef0': None}
    """
    ids = sorted(set(instance_ids))
    states: dict[str, str | None] = dict.fromkeys(ids)
    paginator = ec2.get_paginator("describe_instances")
    for start in range(0, len(ids), _EC2_FILTER_MAX):
        chunk = ids[start : start + _EC2_FILTER_MAX]
        try:
            # A filter, unlike InstanceIds, does not fail the whole call on one unknown id.
            for page in paginator.paginate(Filters=[{"Name": "instance-id", "Values": chunk}]):
                states.update(_states_in(page))
        except ClientError as exc:
            if error_code(exc) != _NOT_FOUND:
                raise wrap(exc, "describing instances") from exc
            for iid in chunk:
                states[iid] = _one_state(ec2, iid)
        except BotoCoreError as exc:
            raise wrap(exc, "describing instances") from exc
    return states


def _states_in(page: Mapping[str, Any]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for reservation in page.get("Reservations", []):
        for inst in reservation.get("Instances", []):
            out[inst["InstanceId"]] = inst.get("State", {}).get("Name")
    return out


def _one_state(ec2: Client, iid: str) -> str | None:
    try:
        page = ec2.describe_instances(InstanceIds=[iid])
    except ClientError as exc:
        if error_code(exc) == _NOT_FOUND:
            return None
        raise wrap(exc, f"describing {iid}") from exc
    except BotoCoreError as exc:
        raise wrap(exc, f"describing {iid}") from exc
    return _states_in(page).get(iid)
