from __future__ import annotations

import os

import pytest
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


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--faults",
        action="store_true",
        default=False,
        help="also run the long fault searches (tests marked 'faults'); nox -s faults passes it",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The fault searches take minutes each: the default run skips them, and says how to run them.
    if config.getoption("--faults"):
        return
    skip = pytest.mark.skip(reason="a long fault search: run it with --faults (nox -s faults)")
    for item in items:
        if item.get_closest_marker("faults") is not None:
            item.add_marker(skip)
