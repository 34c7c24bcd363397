"""A real PostgreSQL server for the tests: Debian's postgresql package, started in a temp dir on
127.0.0.1 and a free port, stopped afterwards. As root it runs as the `postgres` user (PostgreSQL
refuses root). Without the binaries the tests that need it skip, saying so."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest

_BIN_GLOB = "/usr/lib/postgresql/*/bin"


def _bin_dir() -> str | None:
    for path in sorted(glob.glob(_BIN_GLOB), reverse=True):
        if os.path.exists(os.path.join(path, "initdb")) and os.path.exists(os.path.join(path, "pg_ctl")):
            return path
    found = shutil.which("initdb")
    return os.path.dirname(found) if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def postgres_dsn() -> Iterator[str]:
    bindir = _bin_dir()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql; .ci/run does it): "
                    "the PostgreSQL usage store tests need a real server")
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        pytest.skip("asyncpg is not installed (pip install -e '.[test]')")
    as_user: list[str] = []
    root = os.geteuid() == 0
    if root:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run PostgreSQL as")
        as_user = ["runuser", "-u", "postgres", "--"]
    tmp = tempfile.mkdtemp(prefix="otelgate-pg-")
    if root:
        shutil.chown(tmp, "postgres")
    data = os.path.join(tmp, "data")
    port = _free_port()
    subprocess.run([*as_user, f"{bindir}/initdb", "-D", data, "-U", "otelgate", "-A", "trust", "--no-sync", "-E", "UTF8"],
                   check=True, capture_output=True)
    log = os.path.join(tmp, "log")
    subprocess.run([*as_user, f"{bindir}/pg_ctl", "-D", data, "-l", log, "-w", "-t", "30", "start", "-o",
                    f"-h 127.0.0.1 -p {port} -k {tmp} -c fsync=off -c full_page_writes=off"],
                   check=True, capture_output=True)
    try:
        yield f"postgresql://otelgate@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"], capture_output=True)
        time.sleep(0.1)
        shutil.rmtree(tmp, ignore_errors=True)
