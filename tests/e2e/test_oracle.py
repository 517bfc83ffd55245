"""cloud-init's own code judges sealboot's user-data parser, release by release.

``userdata.split`` claims to return exactly the parts cloud-init would hand to its cloud-config,
shell-script and boothook handlers, or to refuse. ``tests/e2e/oracle_probe.py`` runs every case
of ``tests/hostile/corpus.py`` through each rootfs's real cloud-init (``UserDataProcessor``,
EC2's launch-index filter, ``handlers.walk``) and through ``split`` on the same interpreter, in
one chroot process per release; ``split`` also runs here on the host's Python. Per case, per
release, per side, the verdict is: refused, or the same parts (count, kinds, order, payload bytes,
cleaned script names) with nothing cloud-init would act on left out and no custom merge.
A missing rootfs is built by ``scripts/e2e/rootfs.sh``; nothing is skipped.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from sealboot_agent import userdata
from tests.e2e.harness import REPO, TIMINGS, Images, Timing, e2e_suites, probe_json
from tests.e2e.netns import tool
from tests.hostile.corpus import INCLUDE_BODY, INCLUDE_TARGET, MARK, Case, cases

pytestmark = pytest.mark.e2e

# sid: the newest cloud-init (26.x) besides the three the e2e boots use.
SUITES = [*e2e_suites(), "sid"]
PROBE = Path(__file__).with_name("oracle_probe.py")
USERDATA = REPO / "agent" / "sealboot_agent" / "userdata.py"
PROBE_DIR = "/opt/sealboot-oracle"
BUDGET = 16 << 20  # the probe's too: far above the corpus, so no case is refused for size
# Under `unshare --mount --net --pid --fork`: the overlay and the (empty) network vanish with
# it. Only lower directories: the overlay is read-only, the cached rootfs is never written.
LAUNCH = """set -eu
mount -t overlay overlay -o "lowerdir=$1" "$2"
exec chroot "$2" /usr/bin/env -i PATH="$PATH" LANG=C.UTF-8 \
    python3 -I -B /opt/sealboot-oracle/oracle_probe.py
"""


@functools.cache
def corpus() -> tuple[Case, ...]:
    return tuple(cases())


def digest(data: bytes) -> dict[str, Any]:
    """As the probe reports a payload."""
    return {
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "head": base64.b64encode(data[:96]).decode(),
    }


@functools.cache
def host_split() -> dict[str, dict[str, Any]]:
    """``split`` on the host's Python, in the probe's format, per case name."""
    out: dict[str, dict[str, Any]] = {}
    for case in corpus():
        try:
            parts = userdata.split(case.data, userdata.Budget(BUDGET))
        except userdata.Refused as e:
            out[case.name] = {"refused": str(e), "parts": []}
            continue
        out[case.name] = {
            "refused": None,
            "parts": [
                {"kind": p.kind, "filename": p.filename, "payload": digest(p.payload)}
                for p in parts
            ],
        }
    return out


def build_layer(dest: Path) -> Path:
    """The probe, a copy of userdata.py, the corpus and the file '#include' cases read."""
    probe = dest / PROBE_DIR.lstrip("/")
    probe.mkdir(parents=True)
    shutil.copy(PROBE, probe / PROBE.name)
    shutil.copy(USERDATA, probe / "sealboot_userdata.py")
    items = [{"name": c.name, "data": base64.b64encode(c.data).decode()} for c in corpus()]
    (probe / "corpus.json").write_text(json.dumps(items))
    include = dest / INCLUDE_TARGET.lstrip("/")
    include.write_bytes(INCLUDE_BODY)
    return dest


def run_probe(layer: Path, rootfs: Path, root: Path, timeout: float = 300) -> dict[str, Any]:
    root.mkdir()
    argv = [
        tool("unshare"),
        "--mount",
        "--net",
        "--pid",
        "--fork",
        "--kill-child",
        tool("bash"),
        "-c",
        LAUNCH,
        "launch",
        f"{layer}:{rootfs}",
        str(root),
    ]
    result, _ = probe_json(argv, "oracle probe", timeout)
    return result


def show(parts: list[dict[str, Any]]) -> str:
    """Parts for a failure message: kind, content type, file name, size, payload head."""
    return "; ".join(
        f"{p['kind']}"
        + (f" [{p['ctype']}]" if "ctype" in p else "")
        + f" {p['filename']!r}"
        + (f" clean={p['clean']!r}" if "clean" in p else "")
        + (f" merge={p['merge']}" if "merge" in p else "")
        + f" {p['payload']['size']}B {base64.b64decode(p['payload']['head'])[:48]!r}"
        for p in parts
    )


def verdict(ci: dict[str, Any], sb: dict[str, Any]) -> list[str]:
    """What is wrong with *sb* (split's result) given *ci* (cloud-init's); empty when agreed."""
    if sb["refused"] is not None:
        return []  # refusing before anything is deleted is always acceptable
    if ci["error"] is not None:
        return [f"cloud-init failed ({ci['error']}) but split returned: {show(sb['parts'])}"]
    problems: dict[str, list[str]] = {}  # problem -> the variants that have it
    for variant in ("all", "ec2"):  # as NoCloud hands it over, and after EC2's filter
        every = ci["parts" if variant == "all" else "ec2"]
        dropped = [p for p in every if p["kind"] == "other" and not p["empty"]]
        handled = [p for p in every if p["kind"] != "other"]
        mine = sb["parts"]
        why = []
        if dropped:
            why.append(f"split dropped what cloud-init treats otherwise: {show(dropped)}")
        bytes_differ = [
            i
            for i, (a, b) in enumerate(zip(handled, mine), start=1)
            if a["payload"]["sha256"] != b["payload"]["sha256"]
        ]
        names_differ = [
            i
            for i, (a, b) in enumerate(zip(handled, mine), start=1)
            if a["kind"] == "script" and a["clean"] != b["filename"]
        ]
        if [p["kind"] for p in handled] != [p["kind"] for p in mine]:
            why.append("different parts (count, kinds or order)")
        elif bytes_differ:
            why.append(f"different payload bytes in part(s) {bytes_differ}")
        elif names_differ:
            why.append(f"different script file names in part(s) {names_differ}")
        if any(p.get("merge") == "custom" for p in handled):
            why.append("cloud-init merges a part by a custom merge_how/Merge-Type")
        if why:
            text = (
                f"{', '.join(why)}\n      cloud-init: {show(every)}\n      split:      {show(mine)}"
            )
            problems.setdefault(text, []).append(variant)
    return [f"[{'+'.join(variants)} parts] {text}" for text, variants in problems.items()]


@pytest.mark.parametrize("suite", SUITES)
def test_split_agrees_with_cloud_init(suite: str, images: Images, tmp_path: Path) -> None:
    rootfs = images.rootfs(suite)
    layer = build_layer(tmp_path / "layer")
    host = host_split()

    start = time.monotonic()
    result = run_probe(layer, rootfs.path, tmp_path / "root")
    seconds = time.monotonic() - start
    TIMINGS.append(Timing(f"oracle {suite} ({len(result['cases'])} cases)", seconds))

    # The probe ran the rootfs's own cloud-init, the release the rootfs records.
    assert result["cloud_init_path"].startswith("/usr/lib/python3/dist-packages/cloudinit")
    assert rootfs.cloud_init_version.startswith(result["cloud_init"]), result["cloud_init"]
    by_name = {c["name"]: c for c in result["cases"]}
    assert list(by_name) == [c.name for c in corpus()]

    # The oracle is not vacuous: cloud-init read the anchors as expected, '#include' really
    # included (from a file, offline), and split accepted a good share of the corpus.
    def kinds(name: str) -> list[str]:
        return [p["kind"] for p in by_name[name]["cloud_init"]["parts"]]

    assert kinds("plain-cloud-config") == ["cloud-config"]
    assert kinds("plain-script") == ["script"]
    assert kinds("plain-boothook") == ["boothook"]
    assert kinds("lone-content-type-header") == ["other"]
    included = by_name["include"]["cloud_init"]["parts"]
    assert [p["payload"]["sha256"] for p in included] == [digest(INCLUDE_BODY)["sha256"]]
    accepted = sum(by_name[c.name]["sealboot"]["refused"] is None for c in corpus())
    assert accepted >= 150, accepted

    failures: list[str] = []
    for case in corpus():
        got = by_name[case.name]
        sides = {"image": got["sealboot"], "host": host[case.name]}
        found: dict[str, list[str]] = {}  # problem -> the sides (python) that have it
        for side, sb in sides.items():
            problems = verdict(got["cloud_init"], sb)
            if sb["refused"] is not None and MARK in sb["refused"].lower():
                problems.append(f"the refusal repeats user data: {sb['refused']!r}")
            refused = sb["refused"] is not None
            if case.expect is not None and refused != (case.expect == "refuse"):
                problems.append(
                    f"expected {case.expect}, got "
                    + (f"Refused({sb['refused']!r})" if refused else show(sb["parts"]))
                )
            for problem in problems:
                found.setdefault(problem, []).append(side)
        failures.extend(
            f"{case.name} (split on {' and '.join(s)} python): {p}" for p, s in found.items()
        )
    assert not failures, (
        f"cloud-init {result['cloud_init']} (python {result['python']}): {len(failures)} "
        f"disagreements over {len(corpus())} cases:\n" + "\n".join(failures[:30])
    )
