"""`make stack`: the local AWS stack in the foreground, for debugging by hand.

Starts the stack the tests and the demo use (``tests/stack``: moto server as a child process and
the strict IMDSv2 emulator), with the controller user and the instance role provisioned, prints
the ``export`` lines that point sealboot, sealboot-agent, boto3 and the AWS CLI at it, and runs
until SIGINT (Ctrl-C), SIGTERM or SIGHUP, then stops moto and the emulator and exits 0.

Example::

    $ make stack                          # terminal 1; or: .venv/bin/python scripts/stack.py
    $ . /tmp/sealboot-stack-*/env         # terminal 2: the same lines as a file
    $ .venv/bin/sealboot seal --namespace default --cluster c1 --machine m1 \\
          --manifest-out m.json -o userdata.mime cloud-config.yaml
    $ .venv/bin/sealboot-agent fetch --manifest m.json    # writes under $SEALBOOT_ROOT
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path
from types import FrameType

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.stack.local import LocalStack  # noqa: E402

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def exports(stack: LocalStack, root: Path) -> list[str]:
    """The shell lines that point every client at *stack* (``unset`` first, then ``export``)."""
    env = {
        # The toolkit records this endpoint in the manifest, so the agent and the fallback use it.
        "SEALBOOT_ENDPOINT_URL": stack.moto.url,
        "AWS_ENDPOINT_URL": stack.moto.url,
        "SEALBOOT_IMDS_ENDPOINT": stack.imds.url,
        "AWS_REGION": stack.region,
        "AWS_DEFAULT_REGION": stack.region,
        # The controller's keys (moto accepts them); the agent takes the instance role's from IMDS.
        "AWS_ACCESS_KEY_ID": stack.admin_keys["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": stack.admin_keys["AWS_SECRET_ACCESS_KEY"],
        # A scratch filesystem root for the agent, and the id cloud-init gives boothooks.
        "SEALBOOT_ROOT": str(root),
        "INSTANCE_ID": stack.identity.instance_id,
    }
    # A profile or session token in the caller's shell would win over these keys.
    lines = ["unset AWS_PROFILE AWS_SESSION_TOKEN"]
    lines += [f"export {key}={shlex.quote(value)}" for key, value in env.items()]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run moto server and the IMDSv2 emulator until Ctrl-C; print export lines."
    )
    parser.add_argument("--region", default="us-east-1", help="default: %(default)s")
    parser.add_argument("--moto-port", type=int, default=0, help="default: a free port")
    parser.add_argument("--imds-port", type=int, default=0, help="default: a free port")
    parser.add_argument(
        "--keep", action="store_true", help="keep the scratch directory (root, logs) on exit"
    )
    args = parser.parse_args(argv)

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    # Before anything starts: a signal during start-up still stops what has started.
    for sig in STOP_SIGNALS:
        signal.signal(sig, on_signal)

    work = Path(tempfile.mkdtemp(prefix="sealboot-stack-"))
    root = work / "root"
    root.mkdir()
    env_file = work / "env"
    stack = LocalStack(
        region=args.region, log_dir=work, moto_port=args.moto_port, imds_port=args.imds_port
    )
    rc = 0
    try:
        try:
            stack.start()
        except BaseException as exc:
            # The servers are daemon threads; moto is the child process that could outlive us.
            stack.moto.stop()
            if not isinstance(exc, Exception):
                raise
            # Ctrl-C in a terminal reaches moto too (one process group): then that is no error.
            if not stop.is_set():
                print(f"sealboot stack: could not start: {exc}", file=sys.stderr)
                rc = 1
            return rc
        try:
            lines = exports(stack, root)
            env_file.write_text("\n".join(lines) + "\n")
            print("\n".join(lines), flush=True)
            print(
                f"# sealboot stack: moto server {stack.moto.url} (log {work / 'moto.log'}), "
                f"IMDSv2 emulator {stack.imds.url} (instance {stack.identity.instance_id}, "
                f"role {stack.identity.role_name}).\n"
                f"# In another shell: . {env_file}   Ctrl-C here stops the stack.",
                file=sys.stderr,
                flush=True,
            )
            while not stop.wait(0.5):
                proc = stack.moto.proc
                if proc is None or proc.poll() is not None:
                    if stop.wait(1):  # Ctrl-C, which moto got too
                        break
                    print("sealboot stack: moto server exited; stopping", file=sys.stderr)
                    rc = 1
                    break
        finally:
            stack.stop()
    finally:
        if args.keep:
            print(f"sealboot stack: stopped; kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
            print("sealboot stack: stopped", file=sys.stderr)
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
