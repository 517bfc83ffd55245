"""Build botocore clients that use the instance profile read through our IMDSv2 client.

botocore signs, retries and resolves endpoints; we only feed it the credentials, so the
token we already hold is reused and IMDSv1 is never tried.

Example::

    >>> session = session_from_imds(imds, imds.role_credentials())
    >>> client = make_client(session, "secretsmanager", region="eu-west-1", endpoint_url=None,
    ...                      deadline=Deadline(60))
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import botocore.loaders
import botocore.session
from botocore.config import Config
from botocore.credentials import CredentialProvider, CredentialResolver, RefreshableCredentials

from sealboot_agent import __version__
from sealboot_agent.deadline import Deadline
from sealboot_agent.imds import Imds, RoleCredentials
from sealboot_agent.stores import STORES

Client = Any


class _ImdsV2Provider(CredentialProvider):  # type: ignore[misc]
    METHOD = "sealboot-imdsv2"
    CANONICAL_NAME = "SealbootImdsV2"

    def __init__(self, initial: dict[str, str], refresh: Callable[[], dict[str, str]]):
        super().__init__()
        self._initial = initial
        self._refresh = refresh

    def load(self) -> RefreshableCredentials:
        return RefreshableCredentials.create_from_metadata(
            metadata=self._initial, refresh_using=self._refresh, method=self.METHOD
        )


def client_config(deadline: Deadline, max_attempts: int = 2, use_fips: bool = False) -> Config:
    """botocore's standard retry mode for a quick retry; the deadline loop in retry.py does
    the rest. These timeouts bound each socket read, not a call: an answer that trickles in
    never times out, so deadline.Watchdog bounds the call."""
    timeout = max(1.0, min(10.0, deadline.remaining() / 3))
    return Config(
        retries={"mode": "standard", "max_attempts": max_attempts},
        connect_timeout=min(3.0, timeout),
        read_timeout=timeout,
        max_pool_connections=20,
        user_agent_extra=f"sealboot-agent/{__version__}",
        use_fips_endpoint=use_fips,
    )


class _Loader(botocore.loaders.Loader):  # type: ignore[misc]
    """botocore's loader, minus the scan of every service directory (hundreds) that it does
    to validate a service name on each new client: the agent only asks for its stores'."""

    def list_available_services(self, type_name: str) -> list[str]:
        return [store.service for store in STORES.values()]


@functools.lru_cache(maxsize=1)
def _shared_loader() -> _Loader:
    """One loader per process, so sessions share its cache of parsed service models."""
    return _Loader()


def session_from_imds(imds: Imds, initial: RoleCredentials) -> botocore.session.Session:
    """A botocore session whose only credential source is the instance profile via IMDSv2."""
    session = botocore.session.Session()
    session.register_component("data_loader", _shared_loader())
    provider = _ImdsV2Provider(
        initial.as_botocore_metadata(), lambda: imds.role_credentials().as_botocore_metadata()
    )
    session.register_component("credential_provider", CredentialResolver(providers=[provider]))
    return session


def make_client(
    session: botocore.session.Session,
    service: str,
    *,
    region: str,
    endpoint_url: str | None,
    deadline: Deadline,
    use_fips: bool = False,
) -> Client:
    return session.create_client(
        service,
        region_name=region,
        endpoint_url=endpoint_url,
        config=client_config(deadline, use_fips=use_fips),
    )
