"""A full data disk must not cost a verdict: the reserve file that gives record room to keep committing.

The image archive and the database share the data disk. When it fills, kept images are the first
writes to fail; record then releases the reserve (a file of allocated blocks kept beside the
database), which gives SQLite room for the rows of the parts still coming, pauses images and raises a
critical `disk_full` alarm. When the disk has room again the reserve is allocated anew and the alarm
clears. Should the store still refuse writes, record holds its rows in memory and retries.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sqlite3
from pathlib import Path

log = logging.getLogger("disk")
RESERVE_NAME = "disk-reserve"
MIN_ROOM = 2**20  # the least free space that counts as room (also with no reserve: disk_reserve_mb 0)
MAX_SHARE = 0.1  # the reserve takes at most this share of the data disk (a small disk keeps room for data)
#: SQLite's primary result codes for a disk that takes no more writes (full) or fails them (I/O error).
_DISK_CODES = {sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN}


def is_disk_full(exc: BaseException) -> bool:
    """The store or a file write failed because the disk is full or refuses writes, not for a bug of ours."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        return code is not None and code & 0xFF in _DISK_CODES
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS)


class DiskReserve:
    """`disk_reserve_mb` of allocated blocks (at most a tenth of the disk) in `data_dir/disk-reserve`.

    After the disk was full, room again means the reserve plus the disk-low floor (at most a tenth of the
    disk) beside it: kept images resume only with room to spare, so the alarm does not flap.
    """

    def __init__(self, data_dir: Path, reserve_mb: float, floor_mb: float):
        self.path = data_dir / RESERVE_NAME
        total = shutil.disk_usage(data_dir).total
        self.size = int(min(reserve_mb * 2**20, total * MAX_SHARE))
        self.headroom = max(self.size, int(min(floor_mb * 2**20, total * MAX_SHARE)), MIN_ROOM)

    @property
    def held(self) -> bool:
        return self.path.exists()

    def allocate(self, after_full: bool = False) -> bool:
        """Hold the reserve when the disk has room for it and as much again (after a full disk: the headroom
        beside it); True when it is held, or with no reserve configured, when that room is there."""
        if self.held:
            return True
        need = self.size + (self.headroom if after_full else max(self.size, MIN_ROOM))
        if shutil.disk_usage(self.path.parent).free < need:
            return False
        if self.size == 0:
            return True
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.posix_fallocate(fd, 0, self.size)  # real blocks: a sparse file would free nothing
        except OSError as exc:
            os.close(fd)
            self.path.unlink(missing_ok=True)
            log.warning("disk reserve of %.1f MB not allocated: %s", self.size / 2**20, exc)
            return False
        os.close(fd)
        return True

    def release(self) -> bool:
        """Give the reserve's blocks back to the disk; True when there was one to give."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        log.warning("disk reserve released: %.1f MB for the store", self.size / 2**20)
        return True
