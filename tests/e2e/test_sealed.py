"""Sealed user data through real cloud-init: a failing fetch is loud, the AWS CLI fallback works."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest

from tests.e2e.harness import (
    Images,
    InstanceNetwork,
    NewInstance,
    cloud_init_versions,
    e2e_releases,
    expected_cloud_init,
    run_copies,
)
from tests.e2e.releases import UPSTREAM, resolve
from tests.e2e.test_harness import (
    assert_clean_boot,
    assert_no_secret,
    expected_at_rest,
    places_with_secret,
    sealed_payload,
)

SUITES = e2e_releases()
# The fallback needs the AWS CLI v2 in the image, in a rootfs "SUITE+awscli": Debian's awscli from
# bookworm on (sid has no such rootfs: a build of its own for no new code path). Upstream releases
# run in bookworm+awscli: 22.2.2 stands for Amazon Linux 2023, whose AMIs ship the AWS CLI v2, and
# 24.4.1 for RHEL 9.6/10.
FALLBACK_UPSTREAM = (UPSTREAM["22.2.2"].id, UPSTREAM["24.4.1"].id)
FALLBACK_SUITES = [
    s
    for s in SUITES
    if s in FALLBACK_UPSTREAM or (resolve(s)[0].upstream is None and s not in ("bullseye", "sid"))
]


@pytest.mark.e2e
@pytest.mark.parametrize("suite", SUITES)
def test_a_missing_fragment_fails_loudly_and_keeps_the_rest(
    suite: str, images: Images, new_instance: NewInstance, aws: InstanceNetwork, tmp_path: Path
) -> None:
    # Random bytes do not compress: two 64 KB fragments.
    payload = b"#cloud-config\n# " + os.urandom(70_000).hex().encode() + b"\n"
    sealed = aws.seal(payload, tmp_path / "seal")
    assert sealed.manifest.count >= 2
    gone = sealed.manifest.fragments[-1]

    def delete_one() -> None:
        aws.stack.secrets().delete_secret(SecretId=gone, ForceDeleteWithoutRecovery=True)

    aws.ns.call(delete_one)
    inst = new_instance(images.with_agent(suite))
    inst.seed(sealed.userdata)

    result = inst.boot()

    # cloud-init only logs a failing boothook; sealboot's failing user script makes it an error.
    assert result.status == "error", result.describe()
    assert cloud_init_versions(result) == {expected_cloud_init(inst.image)}
    assert f"fragment {gone} does not exist" in result.output_log
    assert "what to do:" in result.output_log
    assert "sealboot: fragment" in result.output_log  # the failing user script says it again
    assert aws.secret_names() == sorted(set(sealed.manifest.fragments) - {gone})
    assert not inst.exists("/var/lib/sealboot/userdata")


@pytest.mark.e2e
@pytest.mark.parametrize("suite", FALLBACK_SUITES)
def test_aws_cli_fallback_on_an_image_without_the_agent(
    suite: str, images: Images, new_instance: NewInstance, aws: InstanceNetwork, tmp_path: Path
) -> None:
    token = secrets.token_hex(16)
    sealed = aws.seal(sealed_payload(token), tmp_path / "seal")
    inst = new_instance(images.plain(f"{suite}+awscli"))
    assert not inst.exists("/usr/sbin/sealboot-agent")
    inst.seed(sealed.userdata)

    result = inst.boot()

    assert_clean_boot(result)
    assert cloud_init_versions(result) == {expected_cloud_init(inst.image)}
    assert "fetching 1 fragment(s) with the AWS CLI" in result.output_log
    assert inst.read_text("/var/lib/e2e/script").startswith("script ")
    assert inst.read_text("/var/lib/e2e/runcmd").startswith("runcmd ")
    assert aws.secret_names() == []
    for path in inst.files_under("/var/log"):
        assert_no_secret(path.read_bytes(), token, str(path))
    at_rest = expected_at_rest(inst) | run_copies(inst.image)
    assert places_with_secret(inst, result, token) == at_rest

    second = inst.boot()
    assert_clean_boot(second)
    assert "nothing to do" in second.output_log.splitlines()[-1] or "nothing to do" in (
        second.output_log
    )
