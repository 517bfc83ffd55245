from __future__ import annotations

from sealboot_agent.cli import entrypoint

entrypoint()
