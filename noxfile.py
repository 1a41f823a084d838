"""Developer sessions: `nox -s lint typecheck tests`, `nox -s bench`, `nox -s lock`.

`.ci/run` runs lint and typecheck with `nox --no-venv` in the environment the tests installed,
so CI and a developer run the same commands.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True
LINTED = ("mlship", "runtime", "tests", "bench", "noxfile.py")


def _install(session: nox.Session, *args: str) -> None:
    if session.venv_backend != "none":  # --no-venv: the current environment has them
        session.install(*args)


@nox.session
def lint(session: nox.Session) -> None:
    _install(session, "ruff")
    session.run("python", "-m", "ruff", "check", *LINTED)


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy over mlship/ and runtime/mlship_runtime/ ([tool.mypy] in pyproject.toml)."""
    _install(session, "-e", ".[test]")
    session.run("python", "-m", "mypy")


@nox.session
def tests(session: nox.Session) -> None:
    _install(session, ".[test]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Side-by-side ratios on this machine; see bench/README.md."""
    _install(session, ".[test]")
    for script in ("bench/cli_bench.py", "bench/runtime_bench.py", "bench/optimize_bench.py",
                   "bench/s3_bench.py", "bench/drift_bench.py", "bench/pipeline_bench.py",
                   "bench/profile_bench.py"):
        session.run("python", script, *session.posargs)


@nox.session
def lock(session: nox.Session) -> None:
    """Re-resolve runtime/requirements.lock (docs/building.md); commit the result."""
    _install(session, "-e", ".")
    session.run("python", "-m", "mlship.image.wheelhouse", "lock")
