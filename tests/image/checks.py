"""What every install of the agent must satisfy, however it was installed (install.sh, .deb, .rpm).

Example::

    >>> host = testinfra.get_host(str(root), connection=CHROOT)
    >>> check_installed(host, dist, "3.11.2")
    >>> rss_kib = fetch_with_installed_agent(image, aws, tmp_path / "fetch", "bookworm")
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shlex
import shutil
import stat
from pathlib import Path
from typing import Any

import build_dist

from tests.e2e.agent_install import INSTALL_SH
from tests.e2e.harness import Image, Instance, InstanceNetwork
from tests.image.bake import CACHE_DIR, PYZ, WRAPPER, Dist, measured

# Runs COMMAND... as a child of the image's own python3 and reports the child's peak RSS: the
# largest resident set of any process it waited for (the wrapper execs python, so: the agent).
RSS_PROBE = """import resource, subprocess, sys
rc = subprocess.run(sys.argv[1:]).returncode
print("peak-rss-kib", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(rc)"""


def check_installed(host: Any, dist: Dist, python_version: str) -> None:
    """Files, modes, owners, the pre-extracted tree, ``--version``, the interpreter used."""
    major, minor = python_version.split(".")[:2]
    tag = f"cpython-{major}{minor}"

    pyz = host.file(PYZ)
    assert pyz.is_file
    assert (pyz.mode, pyz.user, pyz.group) == (0o755, "root", "root")
    assert pyz.sha256sum == hashlib.sha256(dist.pyz.read_bytes()).hexdigest()
    wrapper = host.file(WRAPPER)
    assert wrapper.is_file
    assert (wrapper.mode, wrapper.user, wrapper.group) == (0o755, "root", "root")
    assert wrapper.content_string == build_dist.wrapper_text()
    for path in ("/usr/lib/sealboot", CACHE_DIR):
        d = host.file(path)
        assert d.is_directory, path
        assert (d.mode, d.user, d.group) == (0o755, "root", "root"), path

    # Pre-extracted for this build only, compiled for this Python, nothing writable by others.
    name = dist.extraction.rsplit("/", 1)[1]
    assert sorted(host.check_output(f"ls -A {CACHE_DIR}").split()) == sorted(
        [name, f".{name}_lock"]
    )
    site = f"{dist.extraction}/site-packages"
    for module in ("botocore/__init__", "requests/__init__", "sealboot_agent/cli"):
        package, _, mod = module.rpartition("/")
        assert host.file(f"{site}/{package}/__pycache__/{mod}.{tag}.pyc").is_file, module
    loose = host.check_output(
        f"find {CACHE_DIR} /usr/lib/sealboot {WRAPPER} "
        r"\( -perm /022 -o ! -user root -o ! -group root \) -print"
    )
    assert loose == "", f"writable by others or not root's: {loose}"

    version = host.run("sealboot-agent --version")
    assert version.rc == 0, version.stderr
    assert version.stdout == f"sealboot-agent {dist.report.version}\n"
    # The image's own python3 runs it, with the artifact's botocore, not the distribution's.
    probe = host.run(
        "SHIV_INTERPRETER=1 sealboot-agent -c "
        "'import platform, botocore, requests, sealboot_agent; "
        "print(platform.python_version(), botocore.__version__, botocore.__file__, "
        "requests.__file__, sealboot_agent.__file__)'"
    )
    assert probe.rc == 0, probe.stderr
    py, botocore_version, *files = probe.stdout.split()
    assert py == python_version
    assert f"botocore=={botocore_version}" in pinned_text()
    assert all(f.startswith(f"{site}/") for f in files), files
    assert foreign_modules(host) == []
    # Anyone can run it from the pre-extracted tree; it does not need to write there.
    nobody = host.run(
        "python3 -I -c 'import os; os.setgroups([]); os.setgid(65534); os.setuid(65534); "
        f'os.execv("{WRAPPER}", ["sealboot-agent", "--version"])\''
    )
    assert nobody.rc == 0, nobody.stderr
    assert nobody.stdout == version.stdout


# Run by the installed agent's own interpreter (SHIV_INTERPRETER=1 through the wrapper): build
# the clients a fetch builds, which is when botocore and urllib3 look for optional extras, then
# print every loaded module that comes from neither the standard library nor the artifact.
FOREIGN_PROBE = """import sys, sysconfig, botocore.session, requests, sealboot_agent.cli
import sealboot_agent.fetch, sealboot_agent.stores
session = botocore.session.get_session()
for name in ("secretsmanager", "ssm"):
    session.create_client(name, region_name="us-east-1", aws_access_key_id="AKIDEXAMPLE",
                          aws_secret_access_key="example")
own = (sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"],
       sealboot_agent.__file__.rsplit("/sealboot_agent/", 1)[0], sys.path[0] + "/")
for name, mod in sorted(sys.modules.items()):
    path = getattr(mod, "__file__", None)
    if path and not path.startswith(own):
        print(name, path)
"""


def foreign_modules(host: Any) -> list[str]:
    """Modules the installed agent loads from outside the standard library and its artifact."""
    res = host.run(f"SHIV_INTERPRETER=1 sealboot-agent -c {shlex.quote(FOREIGN_PROBE)}")
    assert res.rc == 0, res.stderr
    return [line for line in res.stdout.splitlines() if line.strip()]


def pinned_text() -> str:
    return (INSTALL_SH.parent / "requirements-agent.txt").read_text()


def fragments_left(aws: InstanceNetwork, ssm: bool) -> list[str]:
    """Names of the secrets (or SSM parameters) in the local account."""
    if not ssm:
        return aws.secret_names()

    def names() -> list[str]:
        ssm_client = aws.stack.client("ssm")
        out: list[str] = []
        for page in ssm_client.get_paginator("describe_parameters").paginate():
            out.extend(p["Name"] for p in page["Parameters"])
        return sorted(out)

    return aws.ns.call(names)


def fetch_with_installed_agent(
    image: Image, aws: InstanceNetwork, workdir: Path, label: str, *, ssm: bool = False
) -> int:
    """Seal a payload, run ``sealboot-agent fetch`` of the image in the instance's network, check
    the result; return the agent's peak RSS in KiB."""
    token = secrets.token_hex(16)
    payload = f"#cloud-config\n# image test {token}\n".encode() + os.urandom(2048).hex().encode()
    sealed = aws.seal(payload, workdir / "seal", *(["--backend", "ssm"] if ssm else []))
    assert fragments_left(aws, ssm) == sorted(sealed.manifest.fragments)
    with Instance(image, workdir / "instance", aws) as inst:
        shutil.copyfile(sealed.manifest_path, inst.path("/tmp/manifest.json"))
        res = inst.chroot(
            [
                "python3",
                "-I",
                "-c",
                RSS_PROBE,
                "sealboot-agent",
                "fetch",
                "--manifest",
                "/tmp/manifest.json",
                "--handoff",
                "file",
                "--log-file",
                "-",
            ]
        )
        assert res.returncode == 0, res.stdout + res.stderr
        assert inst.read_bytes("/etc/secret-userdata.txt") == payload
        st = inst.path("/etc/secret-userdata.txt").stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, 0, 0)
        assert token not in res.stderr, "the agent logged the payload"
    assert fragments_left(aws, ssm) == [], "the fragments must be deleted"
    hits = aws.imds_hits()
    assert any(h.method == "PUT" and h.path == "/latest/api/token" for h in hits)
    m = re.search(r"^peak-rss-kib (\d+)$", res.stdout, re.M)
    assert m, res.stdout
    rss = int(m.group(1))
    measured(f"peak RSS of sealboot-agent fetch, {label}", f"{rss / 1024:.1f} MiB")
    return rss
