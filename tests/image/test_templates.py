"""The Packer template and the image-builder role, checked offline: Packer's own HCL2 parser
(Debian's packer 1.6.6: ``validate -syntax-only`` and ``fmt -check``; it is too old to load the
amazon plugin that a full ``validate`` needs), then their structure with python-hcl2 and PyYAML.
Both must run the same install step as the image tests: packaging/install.sh with the artifact
uploaded to /tmp."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import hcl2
import yaml

from tests.e2e.agent_install import PACKAGING, REPO, run

PACKER = PACKAGING / "packer"
TEMPLATE = PACKER / "sealboot-node.pkr.hcl"
PLUGINS = PACKER / "plugins.pkr.hcl"
ROLE = PACKAGING / "image-builder" / "sealboot_agent"
INSTALL_LINE = "sudo sh /tmp/install.sh /tmp/sealboot-agent.pyz"


def unquote(value: Any) -> Any:
    """python-hcl2 keeps the quotes of string literals (``'"v2.0"'``) and ``__is_block__``."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    if isinstance(value, list):
        return [unquote(v) for v in value]
    if isinstance(value, dict):
        return {unquote(k): unquote(v) for k, v in value.items() if k != "__is_block__"}
    return value


def load_hcl(path: Path) -> dict[str, Any]:
    with path.open() as f:
        parsed: dict[str, Any] = unquote(hcl2.load(f))
    return parsed


def test_packer_parses_the_template(system_tools: None) -> None:
    syntax = run(["packer", "validate", "-syntax-only", str(TEMPLATE)])
    fmt = run(["packer", "fmt", "-check", "-diff", str(PACKER)])  # parses every .pkr.hcl

    assert syntax.returncode == 0, syntax.stdout + syntax.stderr
    assert "Syntax-only check passed" in syntax.stdout
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_packer_rejects_a_broken_template(system_tools: None, tmp_path: Path) -> None:
    """The syntax check is real: a missing brace fails it."""
    broken = tmp_path / "broken.pkr.hcl"
    broken.write_text(TEMPLATE.read_text().replace("metadata_options {", "metadata_options", 1))

    res = run(["packer", "validate", "-syntax-only", str(broken)])

    assert res.returncode != 0


def test_build_instance_and_ami_require_imdsv2() -> None:
    sources = load_hcl(TEMPLATE)["source"]
    node = sources[0]["amazon-ebs"]["node"]

    assert node["imds_support"] == "v2.0"
    (metadata,) = node["metadata_options"]
    assert metadata["http_tokens"] == "required"
    assert metadata["http_endpoint"] == "enabled"
    assert metadata["http_put_response_hop_limit"] == 1
    (ami_filter,) = node["source_ami_filter"]
    assert ami_filter["most_recent"] is True


def test_template_uploads_to_tmp_and_runs_install_sh() -> None:
    parsed = load_hcl(TEMPLATE)
    (build,) = parsed["build"]
    (locals_,) = parsed["locals"]

    assert build["sources"] == ["source.amazon-ebs.node"]
    kinds = [next(iter(p)) for p in build["provisioner"]]
    assert kinds == ["file", "shell"]
    upload = build["provisioner"][0]["file"]
    shell = build["provisioner"][1]["shell"]
    assert upload["sources"] == ["${local.artifact}", "${local.install}"]
    assert upload["destination"] == "/tmp/"
    assert shell["inline"][0] == INSTALL_LINE
    assert "/usr/sbin/sealboot-agent --version" in shell["inline"]
    # The uploaded files are this checkout's install.sh and `make dist`'s artifact.
    install = re.fullmatch(r"\$\{path\.root\}/(.+)", locals_["install"])
    assert install
    assert (PACKER / install.group(1)).resolve() == PACKAGING / "install.sh"
    artifact = re.search(r'"\$\{path\.root\}/([^"]+)"', locals_["artifact"])
    assert artifact
    assert (PACKER / artifact.group(1)).resolve() == REPO / "dist" / "sealboot-agent.pyz"


def test_plugins_pin_the_amazon_plugin() -> None:
    (packer,) = load_hcl(PLUGINS)["packer"]
    (plugins,) = packer["required_plugins"]

    assert plugins["amazon"]["source"] == "github.com/hashicorp/amazon"
    assert plugins["amazon"]["version"].startswith(">=")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def test_image_builder_role_runs_install_sh_with_the_artifact() -> None:
    tasks = load_yaml(ROLE / "tasks" / "main.yml")
    defaults = load_yaml(ROLE / "defaults" / "main.yml")
    meta = load_yaml(ROLE / "meta" / "main.yml")

    copies = {
        t["ansible.builtin.copy"]["dest"]: t["ansible.builtin.copy"]["src"]
        for t in tasks
        if "ansible.builtin.copy" in t
    }
    assert copies == {
        "/tmp/sealboot-agent.pyz": "{{ sealboot_agent_artifact }}",
        "/tmp/sealboot-install.sh": "{{ sealboot_agent_install_script }}",
    }
    (install,) = [t for t in tasks if "ansible.builtin.command" in t]
    argv = install["ansible.builtin.command"]["argv"]
    assert argv == [
        "sh",
        "/tmp/sealboot-install.sh",
        "--python",
        "{{ sealboot_agent_python }}",
        "/tmp/sealboot-agent.pyz",
    ]
    assert install["changed_when"] == "': installed' in sealboot_agent_install.stderr"
    assert [t for t in tasks if "ansible.builtin.file" in t][0]["loop"] == list(copies)
    # The defaults point at this checkout's files, relative to the role.
    for var, target in (
        ("sealboot_agent_install_script", PACKAGING / "install.sh"),
        ("sealboot_agent_artifact", REPO / "dist" / "sealboot-agent.pyz"),
    ):
        m = re.fullmatch(r"\{\{ role_path \}\}/(.+)", defaults[var])
        assert m, defaults[var]
        assert (ROLE / m.group(1)).resolve() == target
    assert defaults["sealboot_agent_python"] == "/usr/bin/python3"
    assert meta["dependencies"] == []


def test_image_builder_var_file_names_the_role() -> None:
    var_file = json.loads((PACKAGING / "image-builder" / "sealboot.json").read_text())

    assert var_file["node_custom_roles_post"].endswith("/packaging/image-builder/sealboot_agent")
