"""sealboot: seal EC2 user data into short-lived fragments and render the boothook that fetches it.

Example::

    >>> from sealboot import seal, render, SealConfig
    >>> manifest = seal(b"#cloud-config\\n", namespace="default", cluster="c1", machine="m1",
    ...                 config=SealConfig(region="eu-west-1"))
    >>> userdata = render(manifest)
"""

from __future__ import annotations

from sealboot.delete import delete
from sealboot.errors import SealbootError
from sealboot.render import inspect, render, render_userdata
from sealboot.seal import SealConfig, seal
from sealboot_agent import __version__
from sealboot_agent.wire import Manifest

__all__ = [
    "Manifest",
    "SealConfig",
    "SealbootError",
    "__version__",
    "delete",
    "inspect",
    "render",
    "render_userdata",
    "seal",
]
