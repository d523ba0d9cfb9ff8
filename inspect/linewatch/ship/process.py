"""ship: follow the line's store and upsert what is new into the central PostgreSQL, at least once.

A pass reads each table past its mark (`source.next_batch`) and upserts the batch with its new mark in one
PostgreSQL transaction (`central.upsert`), so a crash, a kill or a lost connection mid-batch leaves PostgreSQL
at the previous mark and the same rows go again. Marks are read from PostgreSQL on every (re)connection: the
appliance keeps no state of its own. PostgreSQL down is normal operation here: ship waits with backoff, the lag
grows (`linewatch_ship_lag_seconds`, a `ship_lag` alarm past `ship.lag_alarm_s`), the line is unaffected.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import threading
from typing import Any

import psycopg
import zmq

from linewatch import metrics
from linewatch.config import LineConfig, ShipConfig
from linewatch.ship.central import SHIPPED, Mark, ensure_schema, read_marks, upsert
from linewatch.ship.source import StoreMismatch, lag_s, next_batch
from linewatch.store.queries import open_reader
from linewatch.wire import Endpoints
from linewatch.wire.channels import AlarmSender
from linewatch.wire.ready import mark_ready

log = logging.getLogger("ship")
PASSWORD_ENV = "LINEWATCH_SHIP_PASSWORD"


class ShipError(Exception):
    """Shipping cannot go on until someone fixes its cause (a password file that cannot be read, a wrong store)."""


def password(cfg: ShipConfig) -> str | None:
    """The role's password: `password_file`'s first line, else LINEWATCH_SHIP_PASSWORD, else None (libpq then
    reads PGPASSWORD or ~/.pgpass). Never logged."""
    if cfg.password_file is not None:
        try:
            lines = cfg.password_file.read_text().splitlines()
        except OSError as exc:
            raise ShipError(f"ship.password_file {cfg.password_file}: {exc.strerror}") from None
        if not lines or not lines[0]:
            raise ShipError(f"ship.password_file {cfg.password_file}: the first line is empty")
        return lines[0]
    return os.environ.get(PASSWORD_ENV)


def connect(cfg: LineConfig) -> psycopg.Connection[Any]:
    sc = cfg.ship
    params: dict[str, Any] = {"host": sc.host, "port": sc.port, "dbname": sc.dbname, "user": sc.user,
                              "sslmode": sc.sslmode, "connect_timeout": math.ceil(sc.connect_timeout_s),
                              "application_name": f"linewatch-ship {cfg.line}"}
    secret = password(sc)
    if secret is not None:
        params["password"] = secret
    return psycopg.connect(autocommit=True, **params)


class Ship:
    def __init__(self, cfg: LineConfig, index: int, stop: threading.Event):
        self.cfg, self.stop = cfg, stop
        self.marks = {t.source: Mark() for t in SHIPPED}  # as PostgreSQL last said; nothing shipped before that
        self.failures = 0
        self.lag_alarmed = False

    def run(self) -> None:
        ctx: zmq.Context[Any] = zmq.Context()
        self.alarms = AlarmSender(ctx, Endpoints(self.cfg.run_dir), "ship")
        sc = self.cfg.ship
        mark_ready(self.cfg.run_dir, "ship", central=f"{sc.host}:{sc.port}/{sc.dbname}")
        try:
            while not self.stop.is_set():
                self._session()
                if not self.stop.is_set():
                    self._report_lag()
                    self.stop.wait(self._backoff())
        finally:
            metrics.SHIP_CONNECTED.set(0)
            self.alarms.close()
            ctx.term()

    def _session(self) -> None:
        """One connection: read the marks, then ship until stopped or something fails (logged, counted)."""
        try:
            with connect(self.cfg) as conn:
                ensure_schema(conn)
                self.marks = read_marks(conn, self.cfg.line)
                metrics.SHIP_CONNECTED.set(1)
                log.info("shipping line %s to %s:%d/%s", self.cfg.line, self.cfg.ship.host, self.cfg.ship.port,
                         self.cfg.ship.dbname)
                while not self.stop.is_set():
                    full = self.ship_pass(conn)
                    self.failures = 0
                    self._report_lag()
                    if not full:
                        self.stop.wait(self.cfg.ship.interval_s)
        except psycopg.Error as exc:
            self._failed(type(exc).__name__, f"PostgreSQL: {str(exc).strip()}")
        except sqlite3.Error as exc:
            self._failed("store", f"the line's store: {exc}")
        except (ShipError, StoreMismatch) as exc:
            self._failed("config" if isinstance(exc, ShipError) else "store_mismatch", str(exc), "critical")
        finally:
            metrics.SHIP_CONNECTED.set(0)

    def ship_pass(self, conn: psycopg.Connection[Any]) -> bool:
        """Ship one batch of each table; True when a table had a full batch (more is waiting)."""
        reader = open_reader(self.cfg.data_dir)
        try:
            full = False
            for table in SHIPPED:
                mark = self.marks[table.source]
                rows, new = next_batch(reader, table, mark, self.cfg.ship.batch_rows)
                if not rows and new == mark:
                    continue
                upsert(conn, self.cfg.line, table, rows, new)
                self.marks[table.source] = new
                metrics.SHIP_ROWS.labels(table.source).inc(len(rows))
                full = full or new.last_id - mark.last_id >= self.cfg.ship.batch_rows
        finally:
            reader.close()
        return full

    def _failed(self, reason: str, message: str, severity: str = "warning") -> None:
        metrics.SHIP_ERRORS.labels(reason).inc()
        self.failures += 1
        log.warning("shipping paused (%s); retrying in %.1f s", message, self._backoff())
        if self.failures == 1 or severity == "critical":
            self.alarms.raise_alarm("ship_failed", f"ship: {message}", severity)

    def _backoff(self) -> float:
        low, high = self.cfg.ship.retry_backoff_s
        return float(min(high, low * 2 ** max(0, self.failures - 1)))

    def _report_lag(self) -> None:
        """The age of each table's oldest unshipped row, against the marks PostgreSQL last gave."""
        try:
            reader = open_reader(self.cfg.data_dir)
        except sqlite3.Error:
            return  # no store yet: nothing to ship, nothing late
        try:
            worst = 0.0
            for table in SHIPPED:
                lag = lag_s(reader, table, self.marks[table.source])
                metrics.SHIP_LAG.labels(table.source).set(lag)
                worst = max(worst, lag)
        except sqlite3.Error as exc:
            log.warning("lag not measured: %s", exc)
            return
        finally:
            reader.close()
        limit = self.cfg.ship.lag_alarm_s
        if limit and worst > limit and not self.lag_alarmed:
            self.alarms.raise_alarm("ship_lag", f"ship: the oldest row not in PostgreSQL is {worst:.0f} s old "
                                    f"(over ship.lag_alarm_s {limit:g})", "warning")
        self.lag_alarmed = bool(limit and worst > limit)
