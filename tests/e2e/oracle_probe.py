"""What a release's own cloud-init makes of each user data, next to sealboot's ``split`` there.

Run by ``tests/e2e/test_oracle.py`` with the rootfs's ``python3`` (3.9 to 3.13) in a chroot of a
read-only overlay over the cached rootfs, in private mount, PID and (empty) network namespaces.
So stdlib only, Python 3.9 syntax. Reads ``corpus.json`` (``[{"name", "data": base64}]``) next
to this file and prints one JSON object on stdout.

For each case, cloud-init's side is exactly what its ``init`` stage does: ``UserDataProcessor``
``.process`` (convert_string, _process_msg, includes), optionally EC2's launch-index filter
(``DataSource._filter_xdata`` with ``ami-launch-index`` 0), then ``handlers.walk``: containers
skipped, the content type, the file name or ``part-%03d``, ``util.fully_decoded_payload``. The
content type picks the handler: cloud-config, script, boothook, or "other". For cloud-config
parts, ``CloudConfigPartHandler._extract_mergers`` says whether a custom merge was asked for.
sealboot's side is ``sealboot_userdata.py`` (a copy of ``agent/sealboot_agent/userdata.py``),
run by the same interpreter, as the agent and the AWS CLI fallback run it on an instance.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import json
import logging
import os
import sys
from typing import Any

from cloudinit import helpers, mergers, util
from cloudinit import user_data as ud
from cloudinit import version as ci_version
from cloudinit.filters import launch_index
from cloudinit.handlers import cloud_config

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
# A copy of agent/sealboot_agent/userdata.py that the test puts next to this file.
sb: Any = importlib.import_module("sealboot_userdata")

KINDS = {
    "text/cloud-config": "cloud-config",
    "text/x-shellscript": "script",
    "text/cloud-boothook": "boothook",
}
BUDGET = 16 << 20
HEAD = 96  # payload bytes shown in a report


def as_bytes(payload: Any) -> bytes | None:
    """cloud-init's payload as the bytes a handler writes: str in UTF-8 with surrogateescape."""
    if payload is None:
        return None
    if isinstance(payload, bytes):
        return payload
    return str(payload).encode("utf-8", "surrogateescape")


def digest(data: bytes | None) -> dict[str, Any]:
    if data is None:
        return {"sha256": None, "size": 0, "head": ""}
    return {
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "head": base64.b64encode(data[:HEAD]).decode(),
    }


def merge_of(payload: Any, headers: dict[str, Any]) -> str:
    """custom, default, or ignored (cloud-init drops the part): what the handler would merge by."""
    handler = cloud_config.CloudConfigPartHandler(helpers.Paths({}))
    default = mergers.string_extract_mergers("dict(replace)+list()+str()")
    try:
        _, found = handler._extract_mergers(payload, headers)
    except Exception as e:  # noqa: BLE001 - the handler logs and skips the part on any error
        return f"ignored: {type(e).__name__}"
    return "default" if list(found) == list(default) else "custom"


def walk(msg: Any) -> list[dict[str, Any]]:
    """cloud-init's handlers.walk over the processed message, one entry per handler call."""
    out: list[dict[str, Any]] = []
    partnum = 0
    for part in msg.walk():
        if part.get_content_maintype() == "multipart":
            continue
        ctype = part.get_content_type() or "application/octet-stream"
        filename = part.get_filename() or f"part-{partnum:03d}"
        headers = dict(part)
        headers["Content-Type"] = ctype
        payload = util.fully_decoded_payload(part)
        data = as_bytes(payload)
        kind = KINDS.get(ctype, "other")
        entry = {
            "ctype": ctype,
            "kind": kind,
            "filename": filename,
            "clean": util.clean_filename(filename),
            "launch_index": part.get("Launch-Index"),
            "payload": digest(data),
            "empty": not data,
        }
        if kind == "cloud-config":
            entry["merge"] = merge_of(payload, headers)
        out.append(entry)
        partnum += 1
    return out


def cloud_init(proc: Any, data: bytes) -> dict[str, Any]:
    try:
        msg = proc.process(data)
    except Exception as e:  # noqa: BLE001 - the stage fails on it: recorded, judged by the test
        return {"error": f"{type(e).__name__}: {str(e)[:200]}"}
    ec2 = launch_index.Filter(util.safe_int("0")).apply(msg)
    return {"error": None, "parts": walk(msg), "ec2": walk(ec2)}


def sealboot(data: bytes) -> dict[str, Any]:
    try:
        parts = sb.split(data, sb.Budget(BUDGET))
    except sb.Refused as e:
        return {"refused": str(e), "parts": []}
    return {
        "refused": None,
        "parts": [
            {"kind": p.kind, "filename": p.filename, "payload": digest(p.payload)} for p in parts
        ],
    }


def main() -> int:
    # cloud-init warns about unhandled parts; stdout carries only the JSON.
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    with open(os.path.join(HERE, "corpus.json")) as f:
        corpus = json.load(f)
    proc = ud.UserDataProcessor(helpers.Paths({}))
    results = []
    for case in corpus:
        data = base64.b64decode(case["data"])
        results.append(
            {"name": case["name"], "cloud_init": cloud_init(proc, data), "sealboot": sealboot(data)}
        )
    json.dump(
        {
            "cloud_init": ci_version.version_string(),
            "cloud_init_path": os.path.dirname(ud.__file__),
            "python": ".".join(map(str, sys.version_info[:3])),
            "cases": results,
        },
        sys.stdout,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
