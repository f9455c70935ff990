"""A throwaway PostgreSQL server for tests: initdb in a temp dir, 127.0.0.1 on a free port, stopped after.

Uses Debian's server binaries (/usr/lib/postgresql/<version>/bin), which
`make test` installs with apt-get when missing (deploy/install-system-deps.sh).
PostgreSQL refuses to run as root, so as root the cluster runs as `nobody`.
"""

from __future__ import annotations

import glob
import os
import pwd
import socket
import subprocess
import tempfile
from contextlib import closing
from pathlib import Path

START_TIMEOUT_S = 60


def server_bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_folder(prefix: str) -> Path:
    """A new folder for a server's files that `nobody` can reach: as root the server runs as `nobody`, and
    pytest's and CI's temporary folders are private (0700), so it lives in a world-readable folder of its
    own directly under /tmp. The caller removes it."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(root, 0o755)
    return root


class PostgresServer:
    def __init__(self, root: Path, *, durable: bool = False) -> None:
        """`durable`: fsync on, as in production (the benchmark); tests run without it, for speed."""
        bindir = server_bin_dir()
        if bindir is None:
            raise RuntimeError("PostgreSQL server binaries not found: run 'make system-deps' (apt-get install postgresql)")
        self.bindir = bindir
        self.root = root
        self.data = root / "data"
        self.port = free_port()
        self.user = "arledger"
        self.password = "arledger"
        self._as_nobody = os.geteuid() == 0
        self.durable = durable

    def _run(self, *command: str) -> None:
        kwargs: dict = {"check": True, "stdout": subprocess.PIPE, "stderr": subprocess.STDOUT}
        if self._as_nobody:
            nobody = pwd.getpwnam("nobody")
            kwargs.update(user=nobody.pw_uid, group=nobody.pw_gid)
        subprocess.run(list(command), **kwargs)

    def start(self) -> "PostgresServer":
        self.root.mkdir(parents=True, exist_ok=True)
        password_file = self.root / "pw"
        password_file.write_text(self.password + "\n")
        if self._as_nobody:
            nobody = pwd.getpwnam("nobody")
            for path in (self.root, password_file):
                os.chown(path, nobody.pw_uid, nobody.pw_gid)
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", self.user, "-A", "scram-sha-256",
                  "--pwfile", str(password_file), "-E", "UTF8", "--no-sync")
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"), "-w",
                  "-t", str(START_TIMEOUT_S), "-o",
                  f"-h 127.0.0.1 -p {self.port} -k {self.root}{'' if self.durable else ' -c fsync=off'} "
                  "-c max_connections=50", "start")
        return self

    def stop(self) -> None:
        if self.data.exists():
            try:
                self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
            except subprocess.CalledProcessError:
                pass

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def url(self, database: str) -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

