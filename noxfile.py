"""Developer sessions: `nox -s lint`, `nox -s tests`, `nox -s bench`."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "mlship", "runtime", "tests", "bench", "noxfile.py")


@nox.session
def tests(session: nox.Session) -> None:
    session.install(".[test]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Side-by-side ratios on this machine; see bench/README.md."""
    session.install(".[test]")
    for script in ("bench/cli_bench.py", "bench/runtime_bench.py", "bench/optimize_bench.py",
                   "bench/s3_bench.py", "bench/drift_bench.py", "bench/pipeline_bench.py"):
        session.run("python", script, *session.posargs)


@nox.session
def lock(session: nox.Session) -> None:
    """Re-resolve runtime/requirements.lock (docs/building.md); commit the result."""
    session.install("-e", ".")
    session.run("python", "-m", "mlship.image.wheelhouse", "lock")
