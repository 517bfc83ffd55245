"""`make demo`: seal -> render -> boot -> agent, end to end against the local AWS stack."""

from __future__ import annotations

import email
import hashlib
import os
import re
import secrets
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.payload import cloud_config  # noqa: E402
from tests.stack.local import LocalStack  # noqa: E402

BIN = Path(sys.executable).parent
BOLD, DIM, GREEN, RED, RESET = "\033[1m", "\033[2m", "\033[32m", "\033[31m", "\033[0m"
if not sys.stdout.isatty():
    BOLD = DIM = GREEN = RED = RESET = ""


def step(n: int, title: str) -> None:
    print(f"\n{BOLD}== {n}. {title}{RESET}")


def show(cmd: list[str]) -> None:
    print(f"{DIM}$ {' '.join(cmd)}{RESET}")


def ok(text: str) -> None:
    print(f"{GREEN}ok{RESET}  {text}")


def fail(text: str) -> None:
    print(f"{RED}FAILED{RESET}  {text}")
    raise SystemExit(1)


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="sealboot-demo-"))
    root = work / "instance-root"
    # A kubeadm-style join cloud-config of 20 KB: CA, keys, certificates and a join token.
    userdata = cloud_config(20 * 1024, seed=secrets.randbelow(1 << 30))
    match = re.search(rb"token: (\S+)", userdata)
    assert match is not None
    token = match.group(1).decode()
    (work / "userdata.yaml").write_bytes(userdata)
    print(f"{BOLD}sealboot demo{RESET} (scratch dir {work})")

    step(1, "start the local AWS stack (moto server + strict IMDSv2 emulator)")
    with LocalStack(log_dir=work) as stack:
        ok(
            f"moto server {stack.moto.url}; IMDS emulator {stack.imds.url}, "
            f"instance {stack.identity.instance_id}, role {stack.identity.role_name}"
        )
        env = dict(os.environ, **stack.admin_keys)

        step(2, f"seal {len(userdata)} bytes of kubeadm user data (PEM keys, a join token)")
        cmd = [
            str(BIN / "sealboot"),
            "seal",
            "--namespace",
            "default",
            "--cluster",
            "demo",
            "--machine",
            "demo-md-0-abcde",
            "--region",
            stack.region,
            "--endpoint-url",
            stack.moto.url,
            "--manifest-out",
            str(work / "manifest.json"),
            "-o",
            str(work / "ec2-userdata.txt"),
            str(work / "userdata.yaml"),
        ]
        show(cmd)
        subprocess.run(cmd, env=env, check=True)
        rendered = (work / "ec2-userdata.txt").read_bytes()
        ok(f"EC2 user data is {len(rendered)} bytes (limit 16384)")

        step(3, "the user data EC2 will carry (and IMDS will serve to anyone who asks)")
        print(textwrap.indent(rendered.decode(), "  | "))
        for needle in (token.encode(), b"PRIVATE KEY", userdata[200:260]):
            if needle in rendered:
                fail("secret material is in the rendered user data")
        ok("no join token, key or certificate in it: only fragment names and a digest")

        step(4, "the fragments in Secrets Manager")
        sm = stack.secrets()
        names = [s["Name"] for s in sm.list_secrets()["SecretList"]]
        for name in names:
            print(f"  {name}")
        ok(f"{len(names)} fragment(s) stored")

        step(5, "first boot: cloud-init runs the boothook part with bash")
        msg = email.message_from_bytes(rendered)
        part = next(p for p in msg.walk() if p.get_content_type() == "text/cloud-boothook")
        hook_bytes = part.get_payload(decode=True)
        assert isinstance(hook_bytes, bytes)
        hook = work / "boothook.sh"
        hook.write_bytes(hook_bytes.split(b"\n", 1)[1])  # cloud-init strips #cloud-boothook
        boot_env = {
            "PATH": f"{BIN}:/usr/sbin:/usr/bin:/sbin:/bin",
            "INSTANCE_ID": stack.identity.instance_id,
            "SEALBOOT_ROOT": str(root),
            "SEALBOOT_IMDS_ENDPOINT": stack.imds.url,  # 169.254.169.254 on a real instance
        }
        show(["bash", str(hook)])
        rc = subprocess.run(["bash", str(hook)], env=boot_env, cwd="/", check=False).returncode
        log = (root / "var/log/cloud-init-output.log").read_text()
        print(f"{DIM}-- {root}/var/log/cloud-init-output.log --{RESET}")
        print(textwrap.indent(log.rstrip(), "  | "))
        if rc != 0:
            fail(f"boothook exited {rc}")
        ok("boothook exited 0")

        step(6, "verify")
        out = root / "var/lib/sealboot/userdata"
        got = out.read_bytes()
        if hashlib.sha256(got).digest() != hashlib.sha256(userdata).digest():
            fail("the written user data differs from the original")
        ok(
            f"{out} matches the original (sha256 {hashlib.sha256(got).hexdigest()[:16]}...), "
            f"mode {oct(out.stat().st_mode & 0o777)}"
        )
        cfg = root / "etc/cloud/cloud.cfg.d/99-sealboot-00.cfg"
        if cfg.read_bytes() != userdata:
            fail(f"{cfg} does not hold the cloud-config")
        ok(
            f"cloud-init hand-off: {cfg.relative_to(root)} (mode "
            f"{oct(cfg.stat().st_mode & 0o777)}) is read by the later stages of this boot"
        )
        scripts = root / "var/lib/cloud/instances" / stack.identity.instance_id / "scripts"
        ok(
            f"scripts-user will run: {', '.join(sorted(p.name for p in scripts.iterdir()))} "
            "(the last one removes the plaintext after the final stage)"
        )
        left = sm.list_secrets()["SecretList"]
        if left:
            fail(f"{len(left)} fragment(s) still exist")
        ok("every fragment is gone from Secrets Manager")
        if token in log:
            fail("the join token appears in the log")
        ok("the log holds no secret bytes")

        step(7, "second boot: the boothook runs again (cloud-init runs boothooks every boot)")
        before = len(stack.imds.hits)
        subprocess.run(["bash", str(hook)], env=boot_env, cwd="/", check=True)
        print(
            textwrap.indent(
                (root / "var/log/cloud-init-output.log").read_text()[len(log) :].rstrip(), "  | "
            )
        )
        if len(stack.imds.hits) != before:
            fail("the second boot talked to IMDS")
        ok("nothing to do, no network calls")
        status = subprocess.run(
            [str(BIN / "sealboot-agent"), "status", "--root", str(root)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        print(textwrap.indent(status.rstrip(), "  | "))
    print(f"\n{BOLD}{GREEN}demo complete{RESET}: local stack stopped; scratch files in {work}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
