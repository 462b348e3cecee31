from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# Profiles: "default" for the normal run, "deep" for the long fault search
# (nox -s faults), "ci" with no deadline for noisy machines.
settings.register_profile("default", max_examples=100, deadline=None)
settings.register_profile(
    "deep",
    max_examples=5000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("ci", max_examples=100, deadline=None, derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
