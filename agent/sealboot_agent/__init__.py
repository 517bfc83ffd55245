"""sealboot-agent: fetch sealed EC2 user data at first boot, verify it, hand it to cloud-init."""

from __future__ import annotations

__version__ = "0.1.0"
