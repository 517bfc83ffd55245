"""Realistic user data: a kubeadm-style cloud-config of PEM blocks, so it compresses like real
certificates and keys (base64 of random DER-like bytes: gzip keeps about 3/4 of it).

Example::

    >>> data = cloud_config(20 * 1024, seed=1)
    >>> len(data) == 20 * 1024
    True
"""

from __future__ import annotations

import base64
import hashlib
import random
import textwrap

_FILES = [
    ("/etc/kubernetes/pki/ca.crt", "CERTIFICATE", 1200),
    ("/etc/kubernetes/pki/ca.key", "RSA PRIVATE KEY", 1700),
    ("/etc/kubernetes/pki/front-proxy-ca.crt", "CERTIFICATE", 1200),
    ("/etc/kubernetes/pki/front-proxy-ca.key", "RSA PRIVATE KEY", 1700),
    ("/etc/kubernetes/pki/sa.key", "RSA PRIVATE KEY", 1700),
    ("/etc/kubernetes/pki/sa.pub", "PUBLIC KEY", 400),
]


def _pem(rng: random.Random, kind: str, nbytes: int) -> str:
    body = base64.b64encode(rng.randbytes(nbytes)).decode()
    lines = "\n".join(body[i : i + 64] for i in range(0, len(body), 64))
    return f"-----BEGIN {kind}-----\n{lines}\n-----END {kind}-----\n"


def _write_file(path: str, content: str, perms: str = "0600") -> str:
    return (
        f"  - path: {path}\n    owner: root:root\n    permissions: '{perms}'\n"
        f"    content: |\n{textwrap.indent(content, '      ')}"
    )


def cloud_config(size: int, seed: int = 0) -> bytes:
    """A ``#cloud-config`` of exactly *size* bytes: kubeadm PKI, a join config, then extra
    CA-bundle certificates until it is big enough. *seed* makes each machine's data differ."""
    rng = random.Random(seed)  # noqa: S311 - test data, not secrets
    token = f"{rng.randbytes(3).hex()}.{rng.randbytes(8).hex()}"
    head = "#cloud-config\nwrite_files:\n"
    files = [_write_file(p, _pem(rng, kind, n)) for p, kind, n in _FILES]
    join = textwrap.dedent(f"""\
        apiVersion: kubeadm.k8s.io/v1beta3
        kind: JoinConfiguration
        discovery:
          bootstrapToken:
            apiServerEndpoint: 10.0.0.1:6443
            token: {token}
            caCertHashes:
            - sha256:{hashlib.sha256(token.encode()).hexdigest()}
        nodeRegistration:
          name: ip-10-0-0-{seed % 250}.ec2.internal
          kubeletExtraArgs:
            cloud-provider: external
        """)
    files.append(_write_file("/run/kubeadm/kubeadm-join-config.yaml", join, "0640"))
    tail = "runcmd:\n  - kubeadm join --config /run/kubeadm/kubeadm-join-config.yaml\n"
    bundle: list[str] = []
    doc = head + "".join(files) + tail
    if len(doc) > size:
        raise ValueError(f"the smallest payload this makes is {len(doc)} bytes")
    while len(doc) < size:
        bundle.append(_pem(rng, "CERTIFICATE", 1300))
        extra = _write_file("/usr/local/share/ca-certificates/fleet.crt", "".join(bundle), "0644")
        doc = head + "".join(files) + extra + tail
    while len(doc) > size:
        # Drop body lines of the last certificate until it fits, then pad to the exact size.
        lines = bundle[-1].splitlines(keepends=True)
        if len(lines) <= 3:
            bundle.pop()
        else:
            del lines[-2]
            bundle[-1] = "".join(lines)
        extra = _write_file("/usr/local/share/ca-certificates/fleet.crt", "".join(bundle), "0644")
        doc = head + "".join(files) + (extra if bundle else "") + tail
    pad = size - len(doc)
    if pad > 0:
        doc += "#" + "x" * (pad - 2) + "\n" if pad >= 2 else "\n"
    data = doc.encode()
    if len(data) != size:
        raise AssertionError(f"payload is {len(data)} bytes, wanted {size}")
    return data
