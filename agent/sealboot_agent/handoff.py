"""Hand-off backends: how fetched user data reaches its consumer.

Example::

    >>> HANDOFFS["file"].default_output
    '/etc/secret-userdata.txt'
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sealboot_agent.config import DEFAULT_OUTPUT, PRIVATE_OUTPUT

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Handoff:
    """A hand-off mode: where the durable copy goes by default and what is said about it."""

    name: str
    default_output: str
    description: str


HANDOFFS: dict[str, Handoff] = {
    "file": Handoff(
        "file",
        DEFAULT_OUTPUT,
        "user data left at the output path (CAPA's location) for the consumer to read",
    ),
    "none": Handoff(
        "none",
        PRIVATE_OUTPUT,
        "user data kept only in sealboot's private state directory; nothing is handed on",
    ),
}
