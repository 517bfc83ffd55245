"""Drive cloud-init's own EC2 classes and the sealboot datasource inside a Debian rootfs.

Run by ``tests/e2e/test_datasource_classes.py`` with the rootfs's ``python3`` (3.9 to 3.13), in a
chroot of an overlay over the cached rootfs, in private mount, PID and network namespaces (lo
carries 169.254.169.254). So stdlib only, Python 3.9 syntax, and nothing from this repository.

Everything is cloud-init's: the system configuration read by ``stages.Init.read_cfg`` from the
rootfs's ``/etc/cloud`` (the test layer adds the sealboot datasource drop-in), its Paths and
Distro, ``DataSourceEc2``'s whole crawl over HTTP (IMDSv2 token, metadata, identity document),
``pkl_store``/``pkl_load`` and ``update_metadata_if_supported``. Two things stand in for the
world: the IMDS, a small HTTP server on 169.254.169.254:80 serving a file of /probe-data as user
data, and the agent, ``AGENT`` pointed at a shell script that prints a file of /probe-data
(``ok:FILE``) or fails (``fail``).

Steps; each prints one JSON object on stdout:

``hostile``    every hostile user data below, through DataSourceEc2 and DataSourceSealboot
``instance``   ``--boot USERDATA AGENT``: a first boot (get_data, then obj.pkl as cloud-init
               writes it); then each ``--refresh USERDATA AGENT EVENT``: obj.pkl restored with
               cloud-init's pkl_load, ``update_metadata_if_supported([EVENT])``, pickled again
"""

from __future__ import annotations

import argparse
import atexit
import base64
import gzip
import hashlib
import json
import logging
import os
import random
import signal
import sys
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from cloudinit import sources, stages
from cloudinit import version as ci_version
from cloudinit.event import EventType
from cloudinit.sources import DataSourceEc2

import sealboot_cloudinit.DataSourceSealboot as dsmod

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = "/probe-data"
AGENT_CALLS = os.path.join(DATA, "agent.calls")
AGENT_MODE = os.path.join(DATA, "agent.mode")
INSTANCE_ID = "i-0123456789abcdef0"
TOKEN = "probe-imdsv2-token"
CASE_MARK = "PROBE-USERDATA-MARK"  # in the readable hostile cases; never in a log line


# --- the IMDS -------------------------------------------------------------------------------


USERDATA = os.path.join(DATA, "imds-user-data")  # what IMDS serves now; absent: 404
IDENTITY = {
    "instanceId": INSTANCE_ID,
    "region": "us-east-1",
    "availabilityZone": "us-east-1a",
    "accountId": "123456789012",
    "architecture": "x86_64",
    "imageId": "ami-0123456789abcdef0",
    "instanceType": "t3.small",
    "privateIp": "10.0.0.10",
}
# What IMDS serves under /<version>/: dicts are directories, bytes leaves, None the user data.
# Few leaves: DataSourceEc2 fetches each one, and the hostile step crawls many times.
TREE: dict[str, Any] = {
    "meta-data": {
        "instance-id": INSTANCE_ID.encode(),
        "local-hostname": b"ip-10-0-0-10.ec2.internal",
    },
    "dynamic": {"instance-identity": {"document": json.dumps(IDENTITY).encode()}},
    "user-data": None,
}


class Imds(BaseHTTPRequestHandler):
    """IMDSv2 enough for DataSourceEc2: a token, every API version, listings and leaves."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        pass

    def _send(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_PUT(self) -> None:  # noqa: N802 - http.server's naming
        if self.path == "/latest/api/token":
            self._send(200, TOKEN.encode())
        else:
            self._send(404, b"")

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        node: Any = TREE
        for name in [p for p in self.path.split("/") if p][1:]:  # [0]: any API version
            if not isinstance(node, dict) or name not in node:
                self._send(404, b"")
                return
            node = node[name]
        if isinstance(node, dict):
            listing = [k + "/" if isinstance(v, dict) else k for k, v in sorted(node.items())]
            self._send(200, "\n".join(listing).encode())
        elif node is None:
            try:
                with open(USERDATA, "rb") as fh:
                    self._send(200, fh.read())
            except FileNotFoundError:
                self._send(404, b"")
        else:
            self._send(200, node)


def set_userdata(userdata: bytes | None) -> None:
    """What IMDS serves as user data from now on (None: a 404, as EC2 without user data)."""
    if userdata is None:
        if os.path.exists(USERDATA):
            os.remove(USERDATA)
        return
    with open(USERDATA + ".new", "wb") as fh:
        fh.write(userdata)
    os.replace(USERDATA + ".new", USERDATA)


def serve_imds() -> None:
    """IMDS on 169.254.169.254:80, in a child process: a thread would share the GIL with the
    crawl and make every request slower."""
    server = HTTPServer(("169.254.169.254", 80), Imds)  # listening before the crawl starts
    pid = os.fork()
    if pid == 0:
        try:
            server.serve_forever()
        finally:
            os._exit(0)
    server.socket.close()
    atexit.register(os.kill, pid, signal.SIGKILL)


# --- cloud-init's objects -------------------------------------------------------------------


def cloud_init() -> Any:
    """cloud-init's Init with the rootfs's system configuration, as each stage starts."""
    init = stages.Init(ds_deps=[])
    init.read_cfg()
    init.initialize()  # /var/lib/cloud/..., as main_init() does first
    # On an instance the systemd generator (ds-identify) has made it before any stage runs.
    os.makedirs(init.paths.run_dir, exist_ok=True)
    return init


def pkl_store(ds: Any, path: str) -> bool:
    """cloud-init's own pickling of the datasource (20.4 keeps it in stages)."""
    store = getattr(sources, "pkl_store", None) or stages._pkl_store
    return bool(store(ds, path))


def pkl_load(path: str) -> Any:
    load = getattr(sources, "pkl_load", None) or stages._pkl_load
    return load(path)


def new_datasource(cls: Any, init: Any) -> Any:
    return cls(init.cfg, init.distro, init.paths)


def agent_calls() -> list[str]:
    try:
        with open(AGENT_CALLS) as fh:
            return fh.read().splitlines()
    except FileNotFoundError:
        return []


def set_agent(mode: str) -> None:
    with open(AGENT_MODE, "w") as fh:
        fh.write(mode + "\n")


def digest(raw: Any) -> str | None:
    """What the test compares: SHA-256 of userdata_raw (with its type), never its bytes."""
    if raw is None:
        return None
    data = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else raw
    return f"{type(raw).__name__}:{hashlib.sha256(data).hexdigest()}"


def get_data(ds: Any) -> tuple[Any, str | None, str | None]:
    """(found, digest of userdata_raw, exception type) of ``ds.get_data()``."""
    try:
        found = ds.get_data()
    except Exception as exc:  # noqa: BLE001 - the finding itself: what escaped get_data
        return None, digest(getattr(ds, "userdata_raw", None)), type(exc).__name__
    return found, digest(ds.userdata_raw), None


# --- hostile user data ----------------------------------------------------------------------


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def _mime(*parts: tuple[str, str]) -> bytes:
    msg = MIMEMultipart()
    for subtype, text in parts:
        msg.attach(MIMEText(text, subtype))
    return msg.as_bytes()


def _deep_mime(depth: int, leaf: str) -> bytes:
    """Multipart nested *depth* times, *leaf* at the bottom (deeper than Python's recursion)."""
    text = "".join(
        f"Content-Type: multipart/mixed; boundary=b{n}\nMIME-Version: 1.0\n\n--b{n}\n"
        for n in range(depth)
    )
    text += f"Content-Type: text/x-shellscript\n\n{leaf}\n"
    text += "".join(f"--b{n}--\n" for n in reversed(range(depth)))
    return text.encode()


def hostile_cases() -> list[tuple[str, bytes | None]]:
    """User data that is not sealboot's, however mangled; the readable ones carry CASE_MARK."""
    config = f"#cloud-config\n# {CASE_MARK}\nruncmd: [[touch, /tmp/x]]\n".encode()
    mine = f"#!/bin/sh\n# {CASE_MARK}\nSEALBOOT_MANIFEST=it's-mine\n"
    cases: list[tuple[str, bytes | None]] = [
        ("no user data (404)", None),
        ("empty", b""),
        ("plain cloud-config", config),
        ("gzip cloud-config", _gzip(config)),
        ("SEALBOOT_MANIFEST=it's-mine", mine.encode()),
        (
            "boothook SEALBOOT_MANIFEST=it's-mine",
            mine.replace("#!/bin/sh", "#cloud-boothook").encode(),
        ),
        ("gzip SEALBOOT_MANIFEST=it's-mine", _gzip(mine.encode())),
        (
            "MIME SEALBOOT_MANIFEST=it's-mine",
            _mime(("cloud-boothook", mine), ("x-shellscript", mine)),
        ),
        (
            "unterminated quote",
            f"#cloud-boothook\n# {CASE_MARK}\nSEALBOOT_MANIFEST+='{{\n".encode(),
        ),
        ("SEALBOOT_HANDOFF unterminated", (mine + 'SEALBOOT_HANDOFF="cloud-init\n').encode()),
        (
            "NUL and invalid UTF-8",
            f"{CASE_MARK}\x00SEALBOOT_MANIFEST=\xff\xfe".encode("latin-1"),
        ),
        ("base64 of SEALBOOT_MANIFEST=it's-mine", base64.b64encode(mine.encode())),
        ("deep MIME", _deep_mime(1100, mine)),
        ("gzip magic only", b"\x1f\x8b"),
        ("gzip header only", _gzip(config)[:10]),
        ("gzip truncated", _gzip(config)[:-9]),
        ("gzip, trailing garbage", _gzip(config) + b"SEALBOOT_MANIFEST=x"),
    ]
    rnd = random.Random(20240914)
    for n in range(2):
        noise = bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 400)))
        cases.append((f"random bytes {n}", CASE_MARK.encode() + noise))
        cases.append((f"gzip magic + random bytes {n}", b"\x1f\x8b" + noise))
    # A corrupt byte (a seeded random value) at each offset of a gzip's deflate stream, where
    # about a quarter make gzip.decompress raise zlib.error, and in its header and trailer
    # (BadGzipFile: flags, CRC, length).
    packed = _gzip(b"#!/bin/sh\nSEALBOOT_MANIFEST=it's-mine\n")
    for i in [2, 3, 9, *range(10, len(packed) - 8), len(packed) - 8, len(packed) - 4]:
        bad = bytearray(packed)
        bad[i] = (bad[i] + rnd.randrange(1, 256)) % 256
        cases.append((f"gzip byte {i} corrupt", bytes(bad)))
    return cases


def gunzip_error(data: bytes | None) -> str | None:
    """What this Python's gzip.decompress raises on *data*, if it is gzip at all."""
    if not data or data[:2] != b"\x1f\x8b":
        return None
    try:
        gzip.decompress(data)
    except Exception as exc:  # noqa: BLE001 - the classification is the point
        return type(exc).__name__
    return "ok"


def step_hostile(args: argparse.Namespace) -> dict[str, Any]:
    set_agent("fail")
    serve_imds()
    init = cloud_init()
    results = []
    for name, userdata in hostile_cases():
        set_userdata(userdata)
        before = len(agent_calls())
        ec2 = get_data(new_datasource(DataSourceEc2.DataSourceEc2, init))
        ours = get_data(new_datasource(dsmod.DataSourceSealboot, init))
        results.append(
            {
                "case": name,
                "gunzip": gunzip_error(userdata),
                "ec2": ec2,
                "sealboot": ours,
                "agent": len(agent_calls()) - before,
            }
        )
    return {"cases": results}


# --- first boot and refreshes ---------------------------------------------------------------


def obj_pkl(init: Any) -> str:
    return str(init.paths.get_ipath_cur("obj_pkl"))


def serve(userdata: str, agent: str) -> None:
    """IMDS serves /probe-data/USERDATA ("-": none) from now on; the agent does AGENT."""
    data = None
    if userdata != "-":
        with open(os.path.join(DATA, userdata), "rb") as fh:
            data = fh.read()
    set_userdata(data)
    set_agent(agent)


def first_boot(init: Any, older: bool) -> dict[str, Any]:
    """A first boot's network stage: get_data, link the instance, pickle the datasource."""
    ds = new_datasource(dsmod.DataSourceSealboot, init)
    found, raw, exc = get_data(ds)
    # Init.instancify() and _write_to_cache(): /var/lib/cloud/instance -> instances/<id>.
    idir = os.path.join(init.paths.cloud_dir, "instances", ds.get_instance_id())
    os.makedirs(idir, exist_ok=True)
    if not os.path.lexists(init.paths.instance_link):
        os.symlink(idir, init.paths.instance_link)
    if older:
        # What the previous sealboot version pickled: no such attribute on the instance.
        ds.__dict__.pop("_sealboot_unsealed", None)
    stored = pkl_store(ds, obj_pkl(init))
    return {"found": found, "userdata_raw": raw, "exception": exc, "stored": stored}


def refresh(init: Any, event_name: str) -> dict[str, Any]:
    """A later boot's network stage, or the hotplug hook: restore obj.pkl, refresh for the
    event, pickle again; what each step left."""
    ds = pkl_load(obj_pkl(init))
    if ds is None:
        return {"error": "pkl_load returned None"}
    out: dict[str, Any] = {"event": event_name, "class": type(ds).__name__}
    out["restored"] = digest(ds.userdata_raw)
    event = getattr(EventType, event_name.upper(), None)
    if event is None:
        out["updated"] = "no such event in this release"
        return out
    try:
        if hasattr(ds, "update_metadata_if_supported"):
            out["updated"] = ds.update_metadata_if_supported([event])
        else:
            # cloud-init 20.4: update_metadata(); EC2 adds BOOT to update_events on classic
            # instances, which is when stages.apply_network_config() refreshes on every boot.
            ds.update_events["network"].add(event)
            out["updated"] = ds.update_metadata([event])
    except Exception as exc:  # noqa: BLE001 - the finding itself
        out["updated"] = "raised " + type(exc).__name__
    out["userdata_raw"] = digest(ds.userdata_raw)
    out["get_userdata_raw"] = digest(ds.get_userdata_raw())
    # Later in the stage Init._write_to_cache() pickles it again (newer get_data() does too).
    pkl_store(ds, obj_pkl(init))
    again = pkl_load(obj_pkl(init))
    out["pickled"] = digest(again.userdata_raw) if again is not None else None
    return out


def step_instance(args: argparse.Namespace) -> dict[str, Any]:
    """A first boot, then refreshes, each restoring the datasource from obj.pkl."""
    out: dict[str, Any] = {"refreshes": []}
    serve_imds()
    init = cloud_init()
    if args.boot:
        serve(*args.boot)
        out["boot"] = first_boot(init, args.as_older_version)
        out["boot"]["agent_calls"] = agent_calls()
    for userdata, agent, event in args.refresh or []:
        serve(userdata, agent)
        result = refresh(init, event)
        result["agent_calls"] = agent_calls()
        out["refreshes"].append(result)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("hostile", "instance", "version"))
    parser.add_argument(
        "--boot", nargs=2, metavar=("USERDATA", "AGENT"), help="first boot (instance)"
    )
    parser.add_argument(
        "--refresh",
        nargs=3,
        action="append",
        metavar=("USERDATA", "AGENT", "EVENT"),
        help="then a refresh for EventType EVENT (instance; repeatable)",
    )
    parser.add_argument(
        "--as-older-version", action="store_true", help="pickle as the previous sealboot did"
    )
    args = parser.parse_args()

    # Only the datasource's own lines, for the test to check what they say.
    handler = logging.FileHandler(os.path.join(DATA, "sealboot.log"))
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    dslog = logging.getLogger(dsmod.__name__)
    dslog.setLevel(logging.DEBUG)
    dslog.addHandler(handler)
    dsmod.AGENT = os.path.join(HERE, "agent")

    result: dict[str, Any] = {}
    if args.step == "hostile":
        result = step_hostile(args)
    elif args.step == "instance":
        result = step_instance(args)
    result["cloud_init"] = ci_version.version_string()
    result["cloud_init_path"] = os.path.dirname(sys.modules["cloudinit"].__file__ or "")
    result["python"] = ".".join(map(str, sys.version_info[:3]))
    result["agent_calls"] = agent_calls()
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
