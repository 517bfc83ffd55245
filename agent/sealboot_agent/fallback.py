"""The boothook's fallback for images without sealboot-agent: the same rules, with the AWS CLI.

``sealboot render`` embeds this module and :mod:`sealboot_agent.userdata` in the boothook (the
definitions :func:`main` reaches, docstrings and annotations stripped), so the fallback splits,
refuses, places and reports exactly as the agent does. Only fetching and deleting differ: they go
through ``aws`` (v2), the only AWS client such an image has. Stdlib only; runs on the image's
python3 (3.9+).

Example::

    $ python3 -I -S -c '...; main(argv)' MANIFEST_JSON   # what the boothook runs
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import random
import re
import subprocess
import sys
import time
from typing import Callable

from sealboot_agent import userdata

CAP = 16 * 1024 * 1024
# The agent's exit codes (README): the fallback uses the same numbers for the same failures.
MANIFEST, MISSING, DENIED, INTEGRITY, SERVICE, WRITE, UNSUPPORTED = 2, 4, 5, 6, 7, 8, 11
PLAINTEXT = "/var/lib/sealboot/userdata"
HOOKS = "/var/lib/sealboot/boothooks"
_NAME = re.compile(r"[A-Za-z0-9/_+=.@-]{1,2048}")
# Every code of stores.RETRYABLE (a unit test holds the two together), and the CLI's own words.
_RETRY = re.compile(
    r"Throttl|TooManyRequests|RequestLimitExceeded|SlowDown|Internal(Service|Server)?(Error|Fail)|"
    r"ServiceUnavailable|RequestTimeout|PriorRequestNotComplete|"
    r"Could not connect|Connection was closed|Read timeout|Unable to locate credentials|"
    r"Error when retrieving credentials"
)
# Per backend: the 'aws' words that read one fragment and that delete one; its name goes last.
CALLS = {
    "ssm": (
        ["ssm", "get-parameter", "--with-decryption", "--query", "Parameter.Value", "--name"],
        ["ssm", "delete-parameter", "--name"],
    ),
    "secrets-manager": (
        ["secretsmanager", "get-secret-value", "--query", "SecretBinary", "--secret-id"],
        ["secretsmanager", "delete-secret", "--force-delete-without-recovery", "--secret-id"],
    ),
}
ADVICE = "check the endpoint, region and network; the boothook runs again on the next boot"


class Failed(Exception):
    """A fallback failure: exit code, what went wrong, what to do."""

    def __init__(self, code: int, message: str, advice: str = ADVICE):
        super().__init__(message)
        self.code = code
        self.advice = advice


def say(level: str, message: str) -> None:
    """One log line in cloud-init-output.log, the boothook's format."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    sys.stdout.write(f"{stamp} sealboot-boothook[{os.getpid()}] {level}: {message}\n")
    sys.stdout.flush()


def read_manifest(text: str) -> dict[str, object]:
    """The fields the fallback uses, each type-checked; the toolkit validated the rest."""
    try:
        m = json.loads(text)
    except (ValueError, RecursionError):
        m = None
    names = m.get("fragments") if isinstance(m, dict) else None
    ok = (
        isinstance(m, dict)
        and m.get("backend") in CALLS
        and isinstance(names, list)
        and 0 < len(names) <= 1024
        and all(isinstance(n, str) and _NAME.fullmatch(n) for n in names)
        and isinstance(m.get("region"), str)
        and all(isinstance(m.get(k), (str, type(None))) for k in ("endpoint_url", "sha256"))
        and all(isinstance(m.get(k), (int, type(None))) for k in ("size", "raw_size"))
    )
    if not ok:
        raise Failed(MANIFEST, "the manifest in the boothook is invalid", "re-render it")
    return m  # type: ignore[no-any-return]


class Cli:
    """``aws`` calls for one manifest, retried with full jitter until the deadline."""

    def __init__(self, m: dict[str, object], env: dict[str, str], deadline: float):
        self.names: list[str] = m["fragments"]  # type: ignore[assignment]
        self.ssm = m["backend"] == "ssm"
        self.get, self.rm = CALLS[str(m["backend"])]
        self.env = env
        self.deadline = deadline
        self.common = ["--output", "text", "--region", str(m["region"])]
        if m.get("endpoint_url"):
            self.common += ["--endpoint-url", str(m["endpoint_url"])]

    def call(self, what: str, args: list[str]) -> str:
        """Standard output of ``aws ARGS``; Failed with the agent's exit code otherwise."""
        attempt = 0
        while True:
            try:
                res = subprocess.run(
                    ["aws", *args, *self.common],
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    env=self.env,
                    check=False,
                    timeout=max(1.0, self.deadline - time.monotonic()),
                )
            except subprocess.TimeoutExpired:
                # A trickling endpoint must not hold the boot past the deadline.
                raise Failed(
                    SERVICE,
                    f"{what}: gave up after {attempt + 1} attempt(s): "
                    "no answer before the deadline",
                ) from None
            if res.returncode == 0:
                return res.stdout.decode("ascii", "replace")
            err = userdata.shown(res.stderr.strip(), 300)
            if "ResourceNotFoundException" in err or "ParameterNotFound" in err:
                raise Failed(MISSING, f"{what}: does not exist ({err})", "re-seal and replace")
            if "AccessDenied" in err or "DecryptionFailure" in err or "KMS" in err:
                raise Failed(
                    DENIED,
                    f"{what}: access denied ({err})",
                    "grant the instance role read and delete on its fragments (sealboot policy)",
                )
            if not _RETRY.search(err):
                raise Failed(SERVICE, f"{what} failed (exit {res.returncode}: {err})")
            delay = random.uniform(0, min(5.0, 0.2 * 2**attempt))  # noqa: S311 - jitter
            if time.monotonic() + delay >= self.deadline:
                raise Failed(
                    SERVICE,
                    f"{what}: gave up after {attempt + 1} attempt(s) at the deadline ({err})",
                )
            time.sleep(delay)
            attempt += 1

    def fetch(self) -> bytes:
        texts = [self.call(f"fragment {n}", [*self.get, n]).strip() for n in self.names]
        if self.ssm:
            # SSM values are slices of one base64 text (as CAPA writes them): join, then decode.
            return _b64("".join(texts), "the fragments are not base64 text")
        return b"".join(
            _b64(t, f"fragment {n} is not binary data") for n, t in zip(self.names, texts)
        )

    def delete(self) -> None:
        for n in self.names:
            try:
                self.call(f"deleting {n}", [*self.rm, n])
            except Failed as exc:
                if exc.code != MISSING:
                    say("WARNING", f"could not delete {n}; remove it with 'sealboot delete'")
        say("INFO", f"deleted {len(self.names)} fragment(s)")


def _b64(text: str, why: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise Failed(INTEGRITY, why, "re-seal; nothing was deleted") from None


def verify(m: dict[str, object], stream: bytes) -> bytes:
    """The user data: sizes and digest as sealed, decompressed within the cap."""
    if m.get("size") is not None and len(stream) != m["size"]:
        raise Failed(INTEGRITY, "the fragments do not have the sealed size", "re-seal")
    digest, sealed = hashlib.sha256(stream).hexdigest(), m.get("sha256")
    # Compared in the open: the expected digest is in the user data for anyone to read.
    if sealed and digest != sealed:
        raise Failed(
            INTEGRITY,
            f"sha256 of the reassembled fragments is {digest}, the manifest says {sealed}",
            "a fragment was changed; re-seal, and check who can write these secrets",
        )
    try:
        data = userdata.gunzip(stream, userdata.Budget(CAP))
    except userdata.Refused as exc:
        raise Failed(INTEGRITY, f"the payload is not valid: {exc}", "re-seal") from None
    if m.get("raw_size") is not None and len(data) != m["raw_size"]:
        raise Failed(INTEGRITY, "the user data does not have the sealed size", "re-seal")
    return data


def writer(root: str) -> userdata.Write:
    """Atomic, durable writes under *root*; a symlink on the way is refused, never followed."""

    def write(inner: str, data: bytes, mode: int) -> None:
        path = root + inner
        parent = os.path.dirname(path)
        os.makedirs(parent, mode=0o700, exist_ok=True)
        if root and os.path.realpath(parent) != os.path.abspath(parent):
            raise Failed(WRITE, f"{inner}: a directory on the way is a symlink", "check the root")
        tmp = f"{path}.sealboot-tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, mode)
            os.replace(tmp, path)
            dfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as exc:
            raise Failed(
                WRITE, f"cannot write {inner} durably ({exc.strerror})", "free space"
            ) from None

    return write


def aws_env(m: dict[str, object], imds: str) -> dict[str, str]:
    """Settings for the AWS CLI: strict IMDSv2, no pager, a quick retry, FIPS if sealed so."""
    env = dict(
        os.environ,
        AWS_EC2_METADATA_V1_DISABLED="true",
        AWS_PAGER="",
        AWS_RETRY_MODE="standard",
        AWS_MAX_ATTEMPTS="2",
    )
    if imds:
        env["AWS_EC2_METADATA_SERVICE_ENDPOINT"] = imds.rstrip("/") + "/"
    if m.get("use_fips") is True:
        env["AWS_USE_FIPS_ENDPOINT"] = "true"
    return env


def hand_off(
    data: bytes, root: str, instance_id: str, manifest_id: str, delete: Callable[[], None]
) -> None:
    """Refuse before any delete, write the plaintext durably, *delete*, place, mark done."""
    try:
        parts = userdata.split(data, userdata.Budget(CAP - len(data)))
        scripts = userdata.scripts_dir(instance_id)
    except userdata.Refused as exc:
        code = INTEGRITY if exc.too_large else UNSUPPORTED
        raise Failed(code, str(exc), "seal cloud-config, shell scripts or boothooks") from None
    write = writer(root)
    write(PLAINTEXT, data, 0o600)
    say("INFO", f"wrote {PLAINTEXT} ({len(data)} bytes, mode 0600, synced)")
    delete()

    def boothook(part: userdata.Part, iid: str) -> None:
        # Where the agent runs it too: on the instance's disk, not in a shared /tmp.
        hook = f"{HOOKS}/boothook-{part.index:03d}"
        write(hook, userdata.boothook_body(part.payload), 0o700)
        env = dict(os.environ, INSTANCE_ID=iid)
        try:
            res = subprocess.run(
                [root + hook], cwd=root or "/", env=env, stdin=subprocess.DEVNULL, check=False
            )
        except OSError as exc:
            say(
                "WARNING",
                f"part {part.index + 1}: the nested boothook could not run: {exc.strerror}",
            )
        else:
            if res.returncode:
                say(
                    "WARNING", f"part {part.index + 1}: the nested boothook exited {res.returncode}"
                )
        finally:
            os.unlink(root + hook)

    userdata.place(parts, instance_id, write, boothook, plaintext=PLAINTEXT, keep_plaintext=False)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(f"{root}{scripts}/{userdata.FAILED_SCRIPT}")
    write(f"/var/lib/sealboot/done/{manifest_id}", b"", 0o600)
    say(
        "INFO",
        f"hand-off cloud-init: {userdata.describe(parts)}; plaintext removed after the final stage",
    )


def run(
    manifest: str, root: str, instance_id: str, manifest_id: str, deadline: float, imds: str
) -> None:
    """Fetch, verify, then :func:`hand_off` with the fragments' deletion."""
    m = read_manifest(manifest)
    cli = Cli(m, aws_env(m, imds), deadline)
    say(
        "INFO",
        f"sealboot-agent is not installed; fetching {len(cli.names)} fragment(s) with the AWS CLI",
    )
    data = verify(m, cli.fetch())
    sealed = m.get("sha256")
    say("INFO", f"verified sha256 {sealed}; user data is {len(data)} bytes")
    hand_off(data, root, instance_id, manifest_id, cli.delete)


def main(argv: list[str]) -> int:
    """``MANIFEST ROOT INSTANCE_ID MANIFEST_ID DEADLINE_SECONDS IMDS_URL``; the exit code."""
    manifest, root, instance_id, manifest_id, seconds, imds = argv
    try:
        run(manifest, root, instance_id, manifest_id, time.monotonic() + float(seconds), imds)
    except Failed as exc:
        say("ERROR", str(exc))
        say("ERROR", f"what to do: {exc.advice}; nothing was deleted unless the log says so")
        say("ERROR", f"exit {exc.code}")
        with contextlib.suppress(userdata.Refused, Failed):
            text = userdata.failure_text(f"{exc} (exit {exc.code})")
            writer(root)(
                f"{userdata.scripts_dir(instance_id)}/{userdata.FAILED_SCRIPT}", text, 0o700
            )
        return exc.code
    return 0
