"""The sealboot datasource: sealed user data processed on cloud-init's first pass (EC2 + IMDSv2)."""

from __future__ import annotations

import secrets
import shutil
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path

import pytest

from tests.e2e.agent_install import build_dist
from tests.e2e.harness import (
    Images,
    Instance,
    InstanceNetwork,
    NewInstance,
    cloud_init_versions,
    e2e_releases,
    expected_cloud_init,
)
from tests.e2e.test_harness import assert_clean_boot, assert_no_secret

pytestmark = pytest.mark.e2e

SUITES = e2e_releases()
CONFIG = """\
# sealboot datasource: EC2 through IMDSv2, sealed user data unsealed before cloud-init reads it.
datasource_list: [Sealboot, None]
datasource_pkg_list: [sealboot_cloudinit]
datasource:
  Ec2:
    strict_id: false
    metadata_urls: ["http://169.254.169.254"]
    timeout: 5
    max_wait: 30
"""


def install_datasource(inst: Instance) -> None:
    """What the AMI install adds for datasource mode (the package and its configuration)."""
    target = inst.path("/usr/lib/python3/dist-packages/sealboot_cloudinit")
    target.mkdir(parents=True, exist_ok=True)
    for name, src in build_dist.datasource_files().items():
        shutil.copy(src, target / name)
    inst.path("/etc/cloud/cloud.cfg.d/96-sealboot-datasource.cfg").write_text(CONFIG)
    inst.prepare_for_ec2_datasource()


def payload(secret: str) -> bytes:
    """What only a first-pass hand-off can do: jinja with instance data, bootcmd, merge_how."""
    first = f"""## template: jinja
#cloud-config
bootcmd:
  - [sh, -c, 'mkdir -p /var/lib/e2e; echo "bootcmd {{{{ v1.instance_id }}}}" >/var/lib/e2e/bootcmd']
write_files:
  - path: /etc/e2e/secret
    permissions: '0600'
    content: |
      {secret}
runcmd:
  - [sh, -c, 'echo first >> /var/lib/e2e/runcmd']
"""
    second = """#cloud-config
merge_how:
  - name: list
    settings: [append]
  - name: dict
    settings: [no_replace, recurse_list]
runcmd:
  - [sh, -c, 'echo second >> /var/lib/e2e/runcmd']
"""
    msg = MIMEMultipart()
    msg.attach(MIMEText(first, "jinja2"))
    msg.attach(MIMEText(second, "cloud-config"))
    return msg.as_bytes()


@pytest.mark.parametrize("suite", SUITES)
def test_sealed_user_data_takes_full_effect_on_the_first_pass(
    suite: str, images: Images, new_instance: NewInstance, aws: InstanceNetwork, tmp_path: Path
) -> None:
    token = secrets.token_hex(16)
    secret = f"SEALBOOT-E2E-{token}"
    sealed = aws.seal(payload(secret), tmp_path / "seal")
    inst = new_instance(images.with_agent(suite))
    install_datasource(inst)
    aws.stack.identity.user_data = sealed.userdata

    result = inst.boot()

    assert_clean_boot(result)
    assert cloud_init_versions(result) == {expected_cloud_init(inst.image)}
    assert inst.read_text("/var/lib/e2e/bootcmd") == f"bootcmd {inst.instance_id}\n"
    assert inst.read_text("/var/lib/e2e/runcmd") == "first\nsecond\n", "merge_how applied"
    assert inst.read_text("/etc/e2e/secret") == f"{secret}\n"
    assert aws.secret_names() == []
    assert "#include" not in result.cloud_init_log
    assert "Sealboot" in result.status_long or "Ec2" in result.status_long
    # The agent ran once, before cloud-init read the user data; the boothook never ran.
    assert result.output_log.count("hand-off stdout") == 1, result.output_log
    assert "sealboot-boothook" not in result.output_log
    for path in inst.files_under("/var/log"):
        assert_no_secret(path.read_bytes(), token, str(path))
    # cloud-init shows the real user data, to root only. (/run is gone after the boot; hand
    # `query` the instance data the boot left there.)
    data = result.out_dir / "run-cloud-init" / "instance-data.json"
    shutil.copy(data, inst.path("/tmp/instance-data.json"))
    query = ["cloud-init", "query", "--instance-data", "/tmp/instance-data.json", "userdata"]
    root_view = inst.chroot(query)
    assert secret in root_view.stdout, root_view.stderr
    nobody = inst.chroot(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *query])
    assert secret not in nobody.stdout + nobody.stderr
    st = inst.path(f"/var/lib/cloud/instances/{inst.instance_id}/user-data.txt").stat()
    assert (st.st_mode & 0o777, st.st_uid) == (0o600, 0)


@pytest.mark.parametrize("suite", SUITES)
def test_unsealed_user_data_behaves_like_stock_ec2(
    suite: str, images: Images, new_instance: NewInstance, aws: InstanceNetwork
) -> None:
    inst = new_instance(images.with_agent(suite))
    install_datasource(inst)
    aws.stack.identity.user_data = (
        b"#cloud-config\nwrite_files:\n  - path: /etc/e2e/plain\n    content: plain\n"
    )

    result = inst.boot()

    assert_clean_boot(result)
    assert cloud_init_versions(result) == {expected_cloud_init(inst.image)}
    assert inst.read_text("/etc/e2e/plain") == "plain"
    assert "sealboot-agent[" not in result.output_log
