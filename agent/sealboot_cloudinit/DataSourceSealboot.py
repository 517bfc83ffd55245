"""cloud-init datasource: EC2, with sealboot's sealed user data swapped for the real one.

cloud-init finds it through ``datasource_pkg_list: [sealboot_cloudinit]`` and
``datasource_list: [Sealboot, None]`` (no other entries: ds-identify knows no Sealboot check).
It subclasses the EC2 datasource, so everything EC2 does stays (``dsname`` is still ``Ec2``,
settings stay under ``datasource: {Ec2: ...}``). When the user data IMDS serves is sealboot's
boothook, it runs ``sealboot-agent fetch --handoff stdout``, which keeps every rule (digest,
durable write, delete, no secret in logs), and hands cloud-init the real user data before
cloud-init processes any of it: jinja templates, merge_how, bootcmd and every part type work as
if EC2 had delivered it in the clear. If the agent fails, the sealed user data stays, so the
boothook path runs (and reports the failure in ``cloud-init status``).

Any other user data, even hostile or corrupt, leaves everything exactly as the EC2 datasource
made it: a failure to recognise user data means "not sealboot's". A refresh after the first boot
(``update_metadata_if_supported`` on a restored ``obj.pkl``: hotplug, ``updates: {network: {when:
[boot]}}``) reads the same sealed user data again; the datasource then restores what it unsealed
the first time and never runs the agent again (its fragments are gone).

Stdlib only: this module is imported by cloud-init's own python3 (3.9 to 3.13) on every boot,
and ``obj.pkl`` references it, so it must stay importable for the life of the instance.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import subprocess

from cloudinit import sources
from cloudinit.sources import DataSourceEc2

try:
    # Installed: the agent's user-data parser travels beside this module (build_dist).
    from sealboot_cloudinit import userdata  # type: ignore[attr-defined]
except ImportError:  # the source tree
    from sealboot_agent import userdata

LOG = logging.getLogger(__name__)

AGENT = "/usr/sbin/sealboot-agent"
AGENT_TIMEOUT = 600


def sealed_manifest(raw: object) -> str | None:
    """The manifest JSON when *raw* is user data rendered by sealboot (cloud-init hand-off)."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogateescape")
    if not isinstance(raw, bytes):
        return None
    try:
        manifest, handoff = userdata.sealed_boothook(raw)
    except userdata.Refused:
        return None
    # Not sealboot's, or the legacy capa layout, which expects the boothook.
    return manifest if handoff == "cloud-init" else None


def _manifest_of(raw: object) -> str | None:
    """:func:`sealed_manifest`, where any failure to read *raw* means "not sealboot's"."""
    try:
        return sealed_manifest(raw)
    except Exception as exc:  # noqa: BLE001
        # Hostile or corrupt user data can make any parser raise anything (zlib.error, shlex's
        # ValueError, RecursionError, MemoryError); none of it is sealboot's, and an exception
        # out of _get_data would leave cloud-init on DataSourceNone. The type only: an
        # exception's text can quote user-data bytes.
        LOG.debug("sealboot: user data is not sealboot's (%s)", type(exc).__name__)
        return None


def _digest(raw: object) -> str:
    """SHA-256 of user data as IMDS served it (text as :func:`sealed_manifest` encodes it)."""
    data = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else raw
    return hashlib.sha256(data if isinstance(data, bytes) else b"").hexdigest()


class DataSourceSealboot(DataSourceEc2.DataSourceEc2):  # type: ignore[misc]
    """The EC2 datasource, unsealing sealboot user data before cloud-init reads it."""

    # (SHA-256 of the sealed user data, what the agent unsealed from it or None when it failed).
    # It pickles with the datasource (obj.pkl, 0400 root, which holds the unsealed user data
    # anyway), and no cloud-init release resets it: clear_cached_attrs() before a refresh resets
    # only cached_attr_defaults (userdata_raw among them), _unpickle() only fills in
    # attributes that are missing. The class default serves an obj.pkl of an older sealboot.
    _sealboot_unsealed: tuple[str, bytes | None] | None = None

    def __setstate__(self, state: dict[str, object]) -> None:
        """Unpickle as cloud-init does, then take over what an older sealboot unsealed."""
        # Newer cloud-init restores through CloudInitPickleMixin (which calls _unpickle);
        # 20.4's DataSource is a plain object, where pickle's default is this update.
        restore = getattr(super(), "__setstate__", None)
        if restore is not None:
            restore(state)
        else:
            self.__dict__.update(state)
        if "_sealboot_unsealed" not in self.__dict__:
            try:
                self._sealboot_unsealed = self._unsealed_by_older_version()
            except Exception as exc:  # noqa: BLE001
                # An exception here would discard obj.pkl, and rediscovery re-runs the agent.
                LOG.debug("sealboot: nothing to remember from obj.pkl (%s)", type(exc).__name__)

    def _unsealed_by_older_version(self) -> tuple[str, bytes | None] | None:
        """What an older sealboot unsealed, from its obj.pkl: the crawl kept the sealed bytes."""
        crawled = getattr(self, "_crawled_metadata", None)
        sealed = crawled.get("user-data") if isinstance(crawled, dict) else None
        raw = getattr(self, "userdata_raw", None)
        if not isinstance(raw, bytes) or sealed is None or _digest(raw) == _digest(sealed):
            return None
        if _manifest_of(sealed) is None:
            return None
        return _digest(sealed), raw

    def _get_data(self):  # type: ignore[no-untyped-def]
        found = super()._get_data()
        if not found:
            return found
        raw = getattr(self, "userdata_raw", None)
        manifest = _manifest_of(raw)
        if manifest is None:
            if self._sealboot_unsealed is not None:
                self._sealboot_unsealed = None  # not sealboot's any more: keep no plaintext
            return found
        digest = _digest(raw)
        remembered = self._sealboot_unsealed
        if isinstance(remembered, tuple) and len(remembered) == 2 and remembered[0] == digest:
            # A refresh of a datasource that already handled this sealed user data: its fragments
            # are gone (deleted by the agent, here or in the boothook), so running the agent again
            # could only fail and hand cloud-init the boothook, which obj.pkl and user-data.txt
            # would then keep for every later boot.
            if isinstance(remembered[1], bytes):
                self.userdata_raw = remembered[1]
                LOG.info("sealboot: user data unsealed before; not fetching it again")
            else:
                LOG.info("sealboot: unsealing failed before; leaving the user data to the boothook")
            return found
        before = self._unsealed_at_first_boot(digest)
        if before is not None:
            self.userdata_raw = before
            LOG.info("sealboot: user data unsealed at this instance's first boot; not again")
            self._sealboot_unsealed = (digest, before)
            return found
        real = self._unseal(manifest)
        self._sealboot_unsealed = (digest, real)
        if real is not None:
            self.userdata_raw = real
        return found

    def _unsealed_at_first_boot(self, digest: str) -> bytes | None:
        """What this instance's own ``obj.pkl`` unsealed from the same sealed user data."""
        # On a reboot cloud-init may drop its cache (22.4 and 25.1's Ec2 cannot check the
        # instance id) and discover this datasource afresh, while obj.pkl of the first boot is
        # still on disk: reuse it rather than run the agent, whose fragments are gone.
        instance_id = str((self.metadata or {}).get("instance-id") or "")
        try:
            userdata.scripts_dir(instance_id)  # one plain path segment, or Refused
            path = os.path.join(self.paths.cloud_dir, "instances", instance_id, "obj.pkl")
            with open(path, "rb") as f:
                previous = pickle.load(f)  # noqa: S301 - cloud-init's own cache, root 0400
        except Exception as exc:  # noqa: BLE001
            LOG.debug("sealboot: no first-boot datasource to reuse (%s)", type(exc).__name__)
            return None
        remembered = getattr(previous, "_sealboot_unsealed", None)
        if (
            isinstance(remembered, tuple)
            and len(remembered) == 2
            and remembered[0] == digest
            and isinstance(remembered[1], bytes)
        ):
            return remembered[1]
        return None

    def _unseal(self, manifest: str) -> bytes | None:
        instance_id = str((self.metadata or {}).get("instance-id") or "")
        argv = [AGENT, "fetch", "--handoff", "stdout", f"--manifest={manifest}"]
        if instance_id:
            argv += ["--instance-id", instance_id]
        try:
            # The agent writes its own lines to /var/log/cloud-init-output.log; nothing secret
            # is on its stderr, which is dropped here so that each line appears there once.
            res = subprocess.run(
                argv,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                stdin=subprocess.DEVNULL,
                timeout=AGENT_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            LOG.warning(
                "sealboot: could not run %s (%s); leaving the sealed user data to the boothook",
                AGENT,
                type(exc).__name__,
            )
            return None
        if res.returncode != 0 or not res.stdout:
            LOG.warning(
                "sealboot: %s fetch exited %d; leaving the sealed user data to the "
                "boothook (see /var/log/cloud-init-output.log)",
                AGENT,
                res.returncode,
            )
            return None
        LOG.info("sealboot: unsealed %d bytes of user data", len(res.stdout))
        return res.stdout


datasources = [
    (DataSourceSealboot, (sources.DEP_FILESYSTEM, sources.DEP_NETWORK)),
]


def get_datasource_list(depends):  # type: ignore[no-untyped-def]
    return sources.list_from_depends(depends, datasources)
