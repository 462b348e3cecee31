"""Every gate of the project is a nox session; CI runs the same ones.

nox -s tests            the default test run (< 5 minutes on 2 cores)
nox -s lint typecheck   ruff check + ruff format --check; mypy --strict
nox -s faults           the long fault searches: tests/faults/ (CPU contention, SIGSTOP
                        pauses) and every property test with the "deep" hypothesis
                        profile (about 30 minutes on 2 cores)
nox -s notebooks        execute every notebook in notebooks/ headless; fail on any error
nox -s docs             build the documentation (Sphinx) with warnings as errors
nox -s bench            benchmarks, as ratios against raw Trio baselines
nox -s demo             a supervision tree crashing, restarting, escalating; then a
                        cluster of real nodes running jobs while one is killed
"""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True

LINT_PATHS = ["trioactors", "tests", "bench", "notebooks", "noxfile.py"]


@nox.session
def tests(session: nox.Session) -> None:
    """The default test run."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.8")
    session.run("ruff", "check", *LINT_PATHS)
    session.run("ruff", "format", "--check", *LINT_PATHS)


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[test]", "mypy>=1.13")  # (testing.strategies imports hypothesis)
    session.run("mypy", "--strict", "trioactors")


@nox.session
def faults(session: nox.Session) -> None:
    """The long fault searches the default run skips.

    Runs the tests marked ``faults`` (``--faults`` un-skips them) and every
    hypothesis test with the "deep" profile. Arguments replace the selection:
    ``nox -s faults -- tests/faults``.
    """
    session.install("-e", ".[test]")
    selection = session.posargs or ["-m", "faults or hypothesis", "tests"]
    session.run(
        "pytest",
        "--faults",
        "-s",  # the searches print what they measured, as they finish
        # single searches run for minutes by design; each keeps its own trio deadline
        "-o",
        "faulthandler_timeout=900",
        *selection,
        env={"HYPOTHESIS_PROFILE": "deep"},
    )


@nox.session
def notebooks(session: nox.Session) -> None:
    """Execute every notebook headless in a fresh kernel; any error fails the session."""
    session.install("-e", ".[notebooks]")
    session.run("python", "notebooks/execute.py", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """Build the HTML documentation into build/docs; any warning fails the build."""
    session.install("-e", ".[docs]")
    session.run(
        "sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "build/docs", *session.posargs
    )


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks; each prints one JSON object per line (see bench/README.md)."""
    session.install("-e", ".")
    session.run("python", "-m", "bench", *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    """The README's demo."""
    session.install(".")
    session.run("trioactors", "demo", *session.posargs)
