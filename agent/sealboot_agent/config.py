"""The agent's one frozen configuration, built at the edge (CLI > environment > defaults)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from sealboot_agent.errors import UsageError, shown
from sealboot_agent.wire import BACKEND_SECRETS_MANAGER, Manifest

DEFAULT_IMDS_ENDPOINT = "http://169.254.169.254"
DEFAULT_OUTPUT = "/etc/secret-userdata.txt"
PRIVATE_OUTPUT = "/var/lib/sealboot/userdata"
DEFAULT_STATE_DIR = "/var/lib/sealboot"
DEFAULT_LOG_FILE = "/var/log/cloud-init-output.log"
DEFAULT_MAX_SIZE = 16 * 1024 * 1024
DEFAULT_DEADLINE = 300.0
DEFAULT_DENIED_GRACE = 60.0
# ASCII digits only: float() and int() also take Arabic-Indic digits, "_" and "nan".
_SECONDS_RE = re.compile(r"^[0-9]+(\.[0-9]+)?\Z")

# Environment variables the CLI reads (and nothing else does).
ENV = {
    "region": "SEALBOOT_REGION",
    "endpoint_url": "SEALBOOT_ENDPOINT_URL",
    "imds_endpoint": "SEALBOOT_IMDS_ENDPOINT",
    "root": "SEALBOOT_ROOT",
    "deadline": "SEALBOOT_DEADLINE",
    "pause_at": "SEALBOOT_TEST_PAUSE_AT",
    "instance_id": "INSTANCE_ID",
}


@dataclass(frozen=True)
class Target:
    """Where the fragments are, with the command line's word over the manifest's.

    The one place that precedence is decided; fetch and doctor both ask it. *region* may
    still be None: then IMDS says.

    Example::

        >>> Target.of(m, region="us-east-2").region
        'us-east-2'
    """

    backend: str
    region: str | None
    region_source: str
    endpoint_url: str | None
    use_fips: bool

    @classmethod
    def of(
        cls,
        manifest: Manifest | None,
        region: str | None = None,
        endpoint_url: str | None = None,
        use_fips: bool = False,
        backend: str = BACKEND_SECRETS_MANAGER,
    ) -> Target:
        """Flags first, then the manifest; *backend* counts only without a manifest."""
        if manifest is None:
            return cls(backend, region, "--region" if region else "", endpoint_url, use_fips)
        return cls(
            manifest.backend,
            region or manifest.region,
            "--region" if region else ("the manifest" if manifest.region else ""),
            endpoint_url or manifest.endpoint_url,
            use_fips or manifest.use_fips,
        )


@dataclass(frozen=True)
class AgentConfig:
    """Everything one agent run needs to know; paths are inside ``root``.

    Example::

        >>> AgentConfig(manifest=m, root=Path("/tmp/inst")).path("/etc/x")
        PosixPath('/tmp/inst/etc/x')
    """

    manifest: Manifest
    root: Path = Path("/")
    output: str = DEFAULT_OUTPUT
    handoff: str = "file"
    region: str | None = None
    endpoint_url: str | None = None
    imds_endpoint: str = DEFAULT_IMDS_ENDPOINT
    state_dir: str = DEFAULT_STATE_DIR
    log_file: str | None = DEFAULT_LOG_FILE
    max_size: int = DEFAULT_MAX_SIZE
    deadline: float = DEFAULT_DEADLINE
    require_delete: bool = False
    denied_grace: float = DEFAULT_DENIED_GRACE
    # cloud-init's instance id (boothooks get it as $INSTANCE_ID); may differ from EC2's.
    cloud_init_instance_id: str | None = None
    keep_plaintext: bool = False
    use_fips: bool = False
    verbose: int = 0
    # Test hook: stop after saving this phase until killed (crash-safety tests).
    pause_at: str | None = None

    def path(self, inside: str) -> Path:
        """Map an absolute path on the instance to the configured filesystem root."""
        return self.root / inside.lstrip("/")

    @property
    def target(self) -> Target:
        """Backend, region, endpoint and FIPS: the flags over the manifest."""
        return Target.of(self.manifest, self.region, self.endpoint_url, self.use_fips)


def pick(cli: str | None, env: Mapping[str, str], key: str) -> str | None:
    """CLI value if given, else the environment's, else None."""
    if cli is not None:
        return cli
    value = env.get(ENV[key])
    return value if value else None


def parse_seconds(text: str, what: str) -> float:
    """*text* as a non-negative number of seconds, in ASCII digits; UsageError otherwise."""
    if not _SECONDS_RE.match(text):
        raise UsageError(f"{what} '{shown(text)}' is not a number of seconds")
    return float(text)


def checked_inside(option: str, path: str) -> str:
    """*path* if it is absolute and has no ``..`` (it is taken under --root); UsageError if not."""
    if not path.startswith("/"):
        raise UsageError(f"{option} must be an absolute path (it is taken under --root)")
    if ".." in PurePosixPath(path).parts:
        raise UsageError(f"{option} '{shown(path)}' has a '..' component, which could leave --root")
    return path


def parse_deadline(text: str | None) -> float:
    if text is None:
        return DEFAULT_DEADLINE
    value = parse_seconds(text, "deadline")
    if not 1 <= value <= 86400:
        raise UsageError("deadline must be between 1 and 86400 seconds")
    return value
