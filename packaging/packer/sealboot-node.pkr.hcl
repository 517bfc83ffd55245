# Bake sealboot-agent into an EBS-backed AMI: the same install step as the .deb/.rpm, the
# image-builder role and the image tests (packaging/install.sh).
#
#   make dist                                    # -> dist/sealboot-agent.pyz
#   packer init packaging/packer
#   packer build -var region=eu-west-1 packaging/packer
#
# The defaults build on Debian 12. For Amazon Linux 2023 (python3 3.9):
#   -var source_ami_name='al2023-ami-2023.*-x86_64' -var source_ami_owner=amazon \
#   -var ssh_username=ec2-user

variable "region" {
  type        = string
  description = "AWS region to build in."
}

variable "instance_type" {
  type    = string
  default = "t3.small"
}

variable "source_ami_name" {
  type        = string
  description = "Name filter of the base AMI; its python3 must be CPython 3.9 or newer."
  default     = "debian-12-amd64-*"
}

variable "source_ami_owner" {
  type        = string
  description = "Owner of the base AMI (136693071363 is Debian)."
  default     = "136693071363"
}

variable "ssh_username" {
  type    = string
  default = "admin"
}

variable "ami_name_prefix" {
  type    = string
  default = "sealboot-node"
}

variable "artifact" {
  type        = string
  description = "sealboot-agent.pyz to install (default: dist/ of this checkout)."
  default     = ""
}

locals {
  timestamp = regex_replace(timestamp(), "[- TZ:]", "")
  artifact  = var.artifact != "" ? var.artifact : "${path.root}/../../dist/sealboot-agent.pyz"
  install   = "${path.root}/../install.sh"
}

source "amazon-ebs" "node" {
  region        = var.region
  instance_type = var.instance_type
  ssh_username  = var.ssh_username
  ami_name      = "${var.ami_name_prefix}-${local.timestamp}"

  source_ami_filter {
    filters = {
      name                = var.source_ami_name
      architecture        = "x86_64"
      root-device-type    = "ebs"
      virtualization-type = "hvm"
    }
    owners      = [var.source_ami_owner]
    most_recent = true
  }

  # Instances launched from the AMI require IMDSv2 (HttpTokens required, hop limit 2):
  # sealboot-agent only ever speaks IMDSv2.
  imds_support = "v2.0"

  # The build instance requires IMDSv2 too.
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  tags = {
    Name                     = "${var.ami_name_prefix}-${local.timestamp}"
    "sealboot.io/agent"      = "installed"
    "sealboot.io/base-image" = "{{ .SourceAMIName }}"
  }
}

build {
  sources = ["source.amazon-ebs.node"]

  # Upload the artifact and the install step to /tmp ...
  provisioner "file" {
    sources     = [local.artifact, local.install]
    destination = "/tmp/"
  }

  # ... and run it as root. It refuses (exit 3) when the AMI has no CPython 3.9 or newer, and
  # pre-extracts the agent so that the first boot pays nothing.
  provisioner "shell" {
    inline = [
      "sudo sh /tmp/install.sh /tmp/sealboot-agent.pyz",
      "sudo rm -f /tmp/install.sh /tmp/sealboot-agent.pyz",
      "/usr/sbin/sealboot-agent --version",
    ]
  }
}
