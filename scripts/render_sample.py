"""Print a rendered boothook (without its #cloud-boothook line) for shellcheck."""

from __future__ import annotations

from sealboot.render import render_boothook
from sealboot_agent.wire import Manifest

SAMPLE = Manifest(
    backend="secrets-manager",
    format="native",
    fragments=(
        "aws.cluster.x-k8s.io/default/c1/m1/abc-0",
        "aws.cluster.x-k8s.io/default/c1/m1/abc-1",
    ),
    region="eu-west-1",
    endpoint_url="https://secretsmanager.eu-west-1.amazonaws.com",
    sha256="0" * 64,
    size=10,
    raw_size=20,
)

if __name__ == "__main__":
    print(render_boothook(SAMPLE).split("\n", 1)[1], end="")
