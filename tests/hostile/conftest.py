"""Hypothesis settings for the hostile-input tests: fixed seed and bounded in ``make test``.

``make hostile`` runs the same properties with many more examples (profile ``long``).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=80,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "long",
    max_examples=5000,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("SEALBOOT_HYPOTHESIS", "ci"))
