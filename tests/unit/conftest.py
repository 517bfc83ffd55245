"""Fixtures shared by the unit tests."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest


@pytest.fixture
def restore_process_state() -> Iterator[None]:
    """main() sets the umask and configure_logging() installs handlers; undo both."""
    old = os.umask(0o022)
    os.umask(old)
    logger = logging.getLogger("sealboot_agent")
    try:
        yield
    finally:
        os.umask(old)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()
