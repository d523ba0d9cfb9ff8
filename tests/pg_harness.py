"""A real PostgreSQL server for the tests, started from Debian's binaries in a temporary directory.

PostgreSQL refuses to run as root: as root, the server runs as the `postgres` user the Debian package creates
(`runuser`). It listens on loopback only, with scram-sha-256 passwords, so ship logs in as it would on a plant.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import psycopg

from tests.conftest import free_port

ROLE = "linewatch"


def _bin(tool: str) -> str:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
    if not versions:
        raise RuntimeError("PostgreSQL's server binaries are missing: install the Debian package postgresql")
    return str(versions[-1] / tool)


class Postgres:
    """initdb + pg_ctl; `stop()` and `start()` again for an outage; `close()` removes everything."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="linewatch-pg-"))
        self.port = free_port()
        self.password = secrets.token_urlsafe(18)
        self.password_file = self.dir / "password"
        self.password_file.write_text(self.password + "\n")
        self._as: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            for path in (self.dir, self.password_file):
                os.chown(path, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        self._run(_bin("initdb"), "-D", str(self.dir / "data"), "-U", ROLE, "--auth=scram-sha-256",
                  f"--pwfile={self.password_file}", "-E", "UTF8", "--no-sync", "--no-instructions")
        self.start()
        with self.connect("postgres") as conn:
            conn.execute("CREATE DATABASE linewatch")

    def _run(self, *cmd: str) -> None:
        out = subprocess.run([*self._as, *cmd], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, f"{cmd[0]} failed:\n{out.stdout}{out.stderr}"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(_bin("pg_ctl"), "-D", str(self.dir / "data"), "-l", str(self.dir / "log"), "-w", "-o", options,
                  "start")

    def stop(self, mode: str = "immediate") -> None:
        """`immediate`: the server dies as in a power cut (no clean shutdown, connections cut)."""
        self._run(_bin("pg_ctl"), "-D", str(self.dir / "data"), "-m", mode, "-w", "stop")

    def connect(self, dbname: str = "linewatch") -> psycopg.Connection[Any]:
        return psycopg.connect(host="127.0.0.1", port=self.port, dbname=dbname, user=ROLE, password=self.password,
                               autocommit=True)

    def ship_config(self, **more: Any) -> dict[str, Any]:
        """The `ship:` section of a line that ships here."""
        return {"host": "127.0.0.1", "port": self.port, "dbname": "linewatch", "user": ROLE,
                "password_file": str(self.password_file), **more}

    def close(self) -> None:
        if (self.dir / "data" / "postmaster.pid").exists():
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
