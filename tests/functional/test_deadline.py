"""--deadline bounds wall time, whatever IMDS and AWS do: answers that trickle in a byte at a
time (which no per-read timeout ever catches) and redirects, against the real agent CLI."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from tests.functional.conftest import (
    BIN,
    Instance,
    Sealed,
    assert_fragments_intact,
    assert_no_secret,
    cloud_config,
    incompressible,
    seal,
    secret_names,
)
from tests.stack.imds import Identity, ImdsEmulator

DEADLINE = 3
# Python start-up, the watchdog's grace after the deadline, and a loaded machine.
SLACK = 3.0


def _fetch(instance: Instance, sealed: Sealed, *extra: str) -> tuple[int, str, float]:
    argv = [
        str(BIN / "sealboot-agent"),
        "fetch",
        "--manifest",
        str(sealed.manifest_path),
        "--root",
        str(instance.root),
        "--endpoint-url",
        instance.stack.proxy.url,
        "--deadline",
        str(DEADLINE),
        *extra,
    ]
    started = time.monotonic()
    # The timeout only keeps a broken agent from hanging the suite; the trickles end by 20 s.
    res = subprocess.run(
        argv, env=instance.env(), capture_output=True, text=True, timeout=60, check=False
    )
    return res.returncode, res.stderr, time.monotonic() - started


def _assert_nothing_leaked(instance: Instance, sealed: Sealed, stderr: str) -> None:
    assert_no_secret(instance.all_text() + stderr.encode(), sealed.payload)


def test_trickling_imds_is_cut_at_the_deadline(instance: Instance, tmp_path: Path) -> None:
    sealed = seal(instance.stack, tmp_path, cloud_config())
    # Faster than any read timeout the old client ever set (it shrank them towards 50 ms).
    instance.stack.imds.faults.trickle = 0.02

    code, err, took = _fetch(instance, sealed)

    assert code == 3, err
    assert took < DEADLINE + SLACK, took
    assert "before the deadline" in err
    assert_fragments_intact(instance.stack, sealed)
    assert not instance.output.exists()
    _assert_nothing_leaked(instance, sealed, err)


def test_trickling_aws_answer_is_cut_at_the_deadline(instance: Instance, tmp_path: Path) -> None:
    sealed = seal(instance.stack, tmp_path, cloud_config(20_000))
    instance.stack.proxy.faults.trickle = 0.05
    instance.stack.proxy.faults.only = {"BatchGetSecretValue"}

    code, err, took = _fetch(instance, sealed)

    assert code == 7, err
    assert took < DEADLINE + SLACK, took
    assert "the 3s deadline ran out while waiting for AWS (BatchGetSecretValue" in err
    assert_fragments_intact(instance.stack, sealed)
    assert not instance.output.exists()
    assert instance.state()["outcome"] == "failed"
    _assert_nothing_leaked(instance, sealed, err)


def test_trickling_answers_on_worker_threads_end_the_process(
    instance: Instance, tmp_path: Path
) -> None:
    # Without BatchGetSecretValue the agent reads the fragments on a thread pool, whose exit
    # waits for every worker: the watchdog has to end the process itself.
    node = ["secretsmanager:GetSecretValue", "secretsmanager:DeleteSecret"]
    instance.stack.reset(node_actions=node)
    sealed = seal(instance.stack, tmp_path, incompressible(150_000))
    assert len(sealed.manifest.fragments) > 1
    instance.stack.proxy.faults.trickle = 0.05
    instance.stack.proxy.faults.only = {"GetSecretValue"}
    instance.stack.moto.enforce_iam(0)
    try:
        code, err, took = _fetch(instance, sealed, "--denied-grace", "0")
    finally:
        instance.stack.moto.enforce_iam(float("inf"))

    assert code == 7, err
    assert took < DEADLINE + SLACK, took
    assert "the 3s deadline ran out while waiting for AWS (GetSecretValue" in err
    assert "exit 7" in err
    assert_fragments_intact(instance.stack, sealed)
    assert not instance.output.exists()
    _assert_nothing_leaked(instance, sealed, err)


def test_trickling_delete_is_reported_honestly(instance: Instance, tmp_path: Path) -> None:
    sealed = seal(instance.stack, tmp_path, cloud_config())
    assert len(sealed.manifest.fragments) == 1
    instance.stack.proxy.faults.trickle = 0.05
    instance.stack.proxy.faults.only = {"DeleteSecret"}

    code, err, took = _fetch(instance, sealed, "--require-delete")

    assert code == 9, err
    assert took < DEADLINE + SLACK, took
    assert "could not be deleted" in err
    assert "ran out while waiting for AWS (DeleteSecret" in err
    # The user data is durable by now; nothing may claim the fragments were left untouched.
    assert "no fragment was deleted" not in err
    assert instance.output.read_bytes() == sealed.payload
    _assert_nothing_leaked(instance, sealed, err)


def test_imds_redirect_is_not_followed(instance: Instance, tmp_path: Path) -> None:
    sealed = seal(instance.stack, tmp_path, cloud_config())
    with ImdsEmulator(Identity(), lambda: {}) as elsewhere:
        instance.stack.imds.faults.redirect = elsewhere.url

        code, err, _ = _fetch(instance, sealed)

        assert elsewhere.hits == [], "the IMDS token went to another server"
    assert code == 3, err
    assert "redirect (HTTP 302)" in err
    assert_fragments_intact(instance.stack, sealed)
    assert set(secret_names(instance.stack)) == set(sealed.manifest.fragments)
