"""Start-up faults a newcomer meets, found before any process starts and told in one line each.

A data directory that cannot be created or written and a port another program holds would otherwise
surface as a child's traceback and "exited with code 1 while starting". Each check names the setting
to change and how.
"""

from __future__ import annotations

import errno
import socket
import tempfile
from pathlib import Path

from linewatch.config import LineConfig


class PreflightError(Exception):
    """The line cannot start on this machine as configured; the text says why and what to change."""


def _writable_dir(path: Path, setting: str, flag: str) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        what = "is read-only" if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM) else "cannot be used"
        raise PreflightError(f"{setting} {path} {what} ({exc.strerror}): choose a writable directory with "
                             f"{flag}{setting} in the config") from None


def _free_port(host: str, port: int, setting: str, flag: str) -> None:
    if port == 0:  # the system picks a free one
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind: TIME_WAIT is no conflict
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                why = "is in use by another program (another linewatch?)"
            elif exc.errno == errno.EACCES:
                why = "needs privileges (ports below 1024)"
            elif exc.errno == errno.EADDRNOTAVAIL:
                why = "is on an address this machine does not have"
            else:
                why = f"cannot be opened ({exc.strerror})"
            raise PreflightError(f"{setting} {port} on {host} {why}: choose another with {flag}{setting} "
                                 "in the config") from None


def preflight(cfg: LineConfig) -> None:
    """Raise PreflightError for the first fault that would stop the line from starting."""
    _writable_dir(cfg.data_dir, "data_dir", "--data-dir or ")
    if cfg.runtime_dir is not None:
        _writable_dir(cfg.runtime_dir, "runtime_dir", "")
    _free_port(cfg.api.host, cfg.api.port, "api.port", "--port or ")
    if cfg.plc.enabled:
        _free_port(cfg.plc.host, cfg.plc.port, "plc.port", "")
