# Packer and plugin versions for sealboot-node.pkr.hcl. Kept in a file of its own: Packer older
# than 1.7 cannot read `required_plugins`, and the template itself stays checkable with any
# Packer's `validate -syntax-only` (tests/image does that with Debian's packer).
packer {
  required_version = ">= 1.10.0"
  required_plugins {
    amazon = {
      # imds_support needs 1.0.1 or newer.
      version = ">= 1.2.0"
      source  = "github.com/hashicorp/amazon"
    }
  }
}
