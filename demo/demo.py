"""`make demo`: seal -> render -> boot -> agent, end to end against the local AWS stack."""

from __future__ import annotations

import email
import gzip
import hashlib
import io
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import TextIO

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.payload import cloud_config  # noqa: E402
from tests.stack.local import LocalStack  # noqa: E402

BIN = Path(sys.executable).parent
BOLD, DIM, GREEN, RED, RESET = "\033[1m", "\033[2m", "\033[32m", "\033[31m", "\033[0m"
if not sys.stdout.isatty():
    BOLD = DIM = GREEN = RED = RESET = ""
# How much of the boothook step 3 shows; the rest is summarised.
HOOK_HEAD = 16
HOOK_WIDTH = 96
# Put in the sealed user data as a comment; `make demo | grep SEALBOOT-DEMO-SECRET` finds nothing.
MARKER = "SEALBOOT-DEMO-" + "SECRET-" + secrets.token_hex(8)


class Tee(io.TextIOBase):
    """Standard output that keeps a copy, so the demo can check that it printed no secret."""

    def __init__(self, out: TextIO):
        self.out = out
        self.seen = io.StringIO()

    def write(self, text: str) -> int:
        self.seen.write(text)
        return self.out.write(text)

    def flush(self) -> None:
        self.out.flush()


def step(n: int, title: str) -> None:
    print(f"\n{BOLD}== {n}. {title}{RESET}")


def show(cmd: list[str]) -> None:
    print(f"{DIM}$ {' '.join(cmd)}{RESET}")


def ok(text: str) -> None:
    print(f"{GREEN}ok{RESET}  {text}")


def note(text: str) -> None:
    print(textwrap.fill(text, 100, initial_indent="    ", subsequent_indent="    "))


def fail(text: str) -> None:
    print(f"{RED}FAILED{RESET}  {text}")
    raise SystemExit(1)


def cut(line: str, width: int = HOOK_WIDTH) -> str:
    return line if len(line) <= width else line[: width - 3] + "..."


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="sealboot-demo-"))
    root = work / "instance-root"
    # A kubeadm-style join cloud-config of 20 KB: CA, keys, certificates and a join token.
    marker_line = f"# {MARKER}\n".encode()
    userdata = cloud_config(20 * 1024 - len(marker_line), seed=secrets.randbelow(1 << 30))
    userdata += marker_line
    match = re.search(rb"token: (\S+)", userdata)
    assert match is not None
    token = match.group(1).decode()
    secret_bits = (token.encode(), MARKER.encode(), b"PRIVATE KEY", userdata[200:260])
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
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        print(textwrap.indent((res.stdout + res.stderr).rstrip(), "  "))
        if res.returncode != 0:
            fail(f"sealboot seal exited {res.returncode}")
        manifest = json.loads((work / "manifest.json").read_text())
        print(f"{DIM}-- the manifest ({work / 'manifest.json'}) --{RESET}")
        print(textwrap.indent(json.dumps(manifest, indent=2, sort_keys=True), "  | "))
        note(
            f"The manifest's sha256 is of the {manifest['size']}-byte gzip stream that was split "
            f"into the fragment(s), not of the {manifest['raw_size']}-byte user data: the agent "
            "checks it on the reassembled fragments before it decompresses, writes or deletes "
            "anything."
        )

        step(3, "the user data EC2 will carry (and IMDS will serve to anyone who asks)")
        rendered = (work / "ec2-userdata.txt").read_bytes()
        text = gzip.decompress(rendered) if rendered[:2] == b"\x1f\x8b" else rendered
        for needle in secret_bits:
            if needle in rendered or needle in text:
                fail("secret material is in the rendered user data")
        msg = email.message_from_bytes(text)
        part = next(p for p in msg.walk() if p.get_content_type() == "text/cloud-boothook")
        hook_bytes = part.get_payload(decode=True)
        assert isinstance(hook_bytes, bytes)
        hook_lines = hook_bytes.decode().splitlines()
        ok(
            f"{len(rendered)} bytes as EC2 gets it{' (gzipped)' if text is not rendered else ''}, "
            f"{len(text)} bytes as text: MIME multipart with one text/cloud-boothook part of "
            f"{len(hook_lines)} lines (EC2's limit, 16384 bytes, applies to the bytes it gets)"
        )
        print(f"{DIM}-- the boothook, first {HOOK_HEAD} lines --{RESET}")
        print("\n".join(f"  | {cut(line)}" for line in hook_lines[:HOOK_HEAD]))
        print(
            f"  | ... {len(hook_lines) - HOOK_HEAD} more lines: the once-per-instance guard, "
            "the call of sealboot-agent, and the AWS CLI fallback's Python for images without it"
        )
        ok("no join token, key or certificate in it: only fragment names and a digest")

        step(4, "the fragments in Secrets Manager")
        sm = stack.secrets()
        names = [s["Name"] for s in sm.list_secrets()["SecretList"]]
        for name in names:
            print(f"  {name}")
        ok(f"{len(names)} fragment(s) stored")

        step(5, "first boot: cloud-init runs the boothook part with bash")
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
        note(
            "'verified sha256' in the log is the manifest's digest of the gzip stream, "
            "recomputed over the fragments the agent fetched."
        )

        step(6, "verify")
        out = root / "var/lib/sealboot/userdata"
        got = out.read_bytes()
        if got != userdata:
            fail("the written user data differs from the original")
        ok(
            f"{out} is the original user data, byte for byte (sha256 of the plaintext "
            f"{hashlib.sha256(got).hexdigest()[:16]}..., a different digest from the manifest's, "
            f"which covers the gzip stream), mode {out.stat().st_mode & 0o777:04o}"
        )
        cfg = root / "etc/cloud/cloud.cfg.d/99-sealboot-00.cfg"
        if cfg.read_bytes() != userdata:
            fail(f"{cfg} does not hold the cloud-config")
        ok(
            f"cloud-init hand-off: {cfg.relative_to(root)} (mode "
            f"{cfg.stat().st_mode & 0o777:04o}) is read by the later stages of this boot"
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
        for needle in secret_bits:
            if needle.decode(errors="replace") in log:
                fail("secret material appears in the log")
        ok("the log holds no secret bytes")

        step(7, "second boot: the boothook runs again (cloud-init runs boothooks every boot)")
        before = len(stack.imds.hits)
        show(["bash", str(hook)])
        subprocess.run(["bash", str(hook)], env=boot_env, cwd="/", check=True)
        print(
            textwrap.indent(
                (root / "var/log/cloud-init-output.log").read_text()[len(log) :].rstrip(), "  | "
            )
        )
        if len(stack.imds.hits) != before:
            fail("the second boot talked to IMDS")
        ok("nothing to do, no network calls")
        cmd = [str(BIN / "sealboot-agent"), "status", "--root", str(root)]
        show(cmd)
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        print(textwrap.indent((res.stdout + res.stderr).rstrip(), "  | "))
        if res.returncode != 0:
            fail(f"sealboot-agent status exited {res.returncode}")
        ok("what happened on this instance, as the agent's state file records it")
    if isinstance(sys.stdout, Tee):
        printed = sys.stdout.seen.getvalue()
        if any(bit.decode(errors="replace") in printed for bit in secret_bits):
            fail("the demo printed secret material")
        ok("nothing this demo printed holds the join token, a key or the secret marker line")
    print(f"\n{BOLD}{GREEN}demo complete{RESET}: local stack stopped; scratch files in {work}")
    return 0


if __name__ == "__main__":
    sys.stdout = Tee(sys.stdout)
    raise SystemExit(main())
