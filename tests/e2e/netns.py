"""A network namespace that plays an EC2 instance's network: IMDS at 169.254.169.254, an eth0.

The namespace is pinned to a file (``unshare --net=FILE true``), so processes enter it with
``nsenter --net=FILE`` and no daemon holds it. Python code of the test process enters it through
:meth:`NetNamespace.call`: the callable runs on one worker thread that has ``setns(2)``-ed into the
namespace (a network namespace belongs to a thread, not to the process), so sockets it opens,
servers it binds and child processes it starts all live there.

Example::

    >>> with NetNamespace(tmp_path / "netns") as ns:
    ...     ns.run(["ip", "-o", "addr"])
    ...     ns.call(socket.create_connection, ("169.254.169.254", 80))
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
IMDS_ADDRESS = "169.254.169.254"
# Where the system tools live, whatever PATH the tests were started with (CI's may lack sbin).
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def tool(name: str) -> str:
    """The absolute path of a system tool (ip, mount, chroot, unshare, nsenter, ...)."""
    found = shutil.which(name, path=f"{os.environ.get('PATH', '')}:{SYSTEM_PATH}")
    if found is None:
        raise FileNotFoundError(f"{name} is not installed (util-linux, iproute2, coreutils)")
    return found


_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _setns(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


class NetNamespace:
    """A pinned network namespace with lo up, 169.254.169.254 on lo, and an eth0 (veth)."""

    def __init__(
        self,
        path: Path,
        *,
        mac: str = "06:00:00:00:00:01",
        address: str = "10.0.0.10/24",
        gateway: str = "10.0.0.1",
    ):
        self.path = path
        self.mac = mac
        self.address = address
        self.gateway = gateway
        self._executor: ThreadPoolExecutor | None = None
        self._thread_ids: set[int] = set()
        self._lock = threading.Lock()

    def command(self, argv: Sequence[str]) -> list[str]:
        """*argv* prefixed so that it runs in the namespace."""
        return [tool("nsenter"), f"--net={self.path}", "--", tool(argv[0]), *argv[1:]]

    def run(self, argv: Sequence[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run *argv* in the namespace; raise with its output when it fails."""
        res = subprocess.run(
            self.command(argv), capture_output=True, text=True, timeout=timeout, check=False
        )
        if res.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)} in {self.path} exited {res.returncode}: {res.stderr.strip()}"
            )
        return res

    def _enter(self) -> None:
        _setns(self.path)
        with self._lock:
            self._thread_ids.add(threading.get_ident())

    def call(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        """Run ``fn(*args, **kwargs)`` on the thread that lives in the namespace."""
        if self._executor is None:
            raise RuntimeError("the network namespace is not open")
        if threading.get_ident() in self._thread_ids:
            return fn(*args, **kwargs)  # already there (a nested call)
        return self._executor.submit(fn, *args, **kwargs).result()

    def open(self) -> NetNamespace:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch()
        try:
            subprocess.run([tool("unshare"), f"--net={self.path}", "true"], check=True, timeout=30)
            # The instance's view: loopback, IMDS's link-local address, and eth0 with the MAC
            # that IMDS reports and a default route (to nowhere: nothing but this namespace
            # exists, so a stray connection fails instead of leaving the machine).
            for argv in (
                ["ip", "link", "set", "lo", "up"],
                ["ip", "addr", "add", f"{IMDS_ADDRESS}/32", "dev", "lo"],
                ["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "veth-gw"],
                ["ip", "link", "set", "eth0", "address", self.mac],
                ["ip", "addr", "add", self.address, "dev", "eth0"],
                ["ip", "link", "set", "veth-gw", "up"],
                ["ip", "link", "set", "eth0", "up"],
                ["ip", "route", "add", "default", "via", self.gateway, "dev", "eth0"],
            ):
                self.run(argv)
            self._executor = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="netns", initializer=self._enter
            )
            self.call(lambda: None)  # fail here, not later, if setns does not work
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self.path.exists():
            # The bind mount pins the namespace; once it and every process in it are gone, so
            # is the namespace.
            subprocess.run([tool("umount"), str(self.path)], capture_output=True, check=False)
            with contextlib.suppress(OSError):
                self.path.unlink()

    def __enter__(self) -> NetNamespace:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()
