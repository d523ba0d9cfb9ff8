"""The central PostgreSQL: its tables, the fleet views, and one batch upserted with its high-water mark.

Every shipped table keeps a row's natural key beside the line's name, the row's time and the whole row as
`jsonb` (the store's columns as they are, so a new column in the line's schema ships without a change here).
The mark of each (line, table) lives in `linewatch_ship_marks` and is written in the same transaction as the
rows it covers: it can never run ahead of them, nor fall behind (ship resumes exactly where PostgreSQL
stopped). Redelivery is harmless anyway: the upserts are idempotent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
import psycopg
from psycopg.types.json import Jsonb


@dataclass(frozen=True)
class Shipped:
    """One table of the line's store and where it goes. `keys`: its natural key besides the line (name, SQL
    type); `t_column`: the row's time (the lag is measured on it); `changed`: columns set after the row was
    written (an alarm's acknowledgement and clearing), whose later values ship again."""

    source: str
    target: str
    keys: tuple[tuple[str, str], ...]
    t_column: str
    changed: tuple[str, ...] = ()


SHIPPED = (
    Shipped("inspections", "linewatch_inspections", (("camera", "text"), ("stream", "text"), ("seq", "bigint")),
            "t_recorded_ns"),
    Shipped("alarms", "linewatch_alarms", (("id", "bigint"),), "t_ns", ("t_ack_ns", "t_cleared_ns")),
    Shipped("operator_actions", "linewatch_audit", (("id", "bigint"),), "t_ns"),
)

_MARKS = """CREATE TABLE linewatch_ship_marks (
    line text NOT NULL, source text NOT NULL, last_id bigint NOT NULL, changed_ns bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (line, source))"""

#: QA across lines: one row per line, camera, recipe and day (UTC) of capture; `not_inspected` counts the parts
#: no worker decided (deadline timeouts, drops, camera losses), all of them FAILs.
_FLEET_QA = """CREATE VIEW linewatch_fleet_qa AS
SELECT line, camera, row->>'recipe' AS recipe,
       date_trunc('day', to_timestamp((row->>'t_capture_ns')::numeric / 1e9)) AS day,
       count(*) AS parts,
       count(*) FILTER (WHERE row->>'final' = 'PASS') AS pass,
       count(*) FILTER (WHERE row->>'final' = 'FAIL') AS fail,
       count(*) FILTER (WHERE row->>'final' = 'REVIEW') AS review,
       count(*) FILTER (WHERE row->>'decided_by' IN ('timeout', 'not_inspected')) AS not_inspected,
       round(count(*) FILTER (WHERE row->>'final' = 'FAIL')::numeric / count(*), 4) AS fail_rate,
       max(shipped_at) AS last_shipped_at
FROM linewatch_inspections GROUP BY 1, 2, 3, 4"""

_FLEET_ALARMS = """CREATE VIEW linewatch_fleet_open_alarms AS
SELECT line, id, to_timestamp(t_ns / 1e9) AS raised_at, row->>'source' AS source, row->>'kind' AS kind,
       row->>'severity' AS severity, row->>'message' AS message
FROM linewatch_alarms WHERE row->>'acknowledged_by' IS NULL AND row->>'t_cleared_ns' IS NULL"""

_SCHEMA_LOCK = 0x6C696E65  # one advisory lock: two lines creating the schema at once wait for each other


def ensure_schema(conn: psycopg.Connection[Any]) -> None:
    """Create the tables and views ship needs that are missing (every line runs this at each connection). Only
    what is missing is created: once they exist, the role needs no CREATE privilege nor to own them."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [_SCHEMA_LOCK])
        for table in SHIPPED:
            keys = ", ".join(f"{name} {kind} NOT NULL" for name, kind in table.keys)
            own_id = "" if any(name == "id" for name, _ in table.keys) else "id bigint NOT NULL, "
            key_names = ", ".join(name for name, _ in table.keys)
            _create(conn, table.target, f"CREATE TABLE {table.target} (line text NOT NULL, {keys}, {own_id}"
                    "t_ns bigint, row jsonb NOT NULL, shipped_at timestamptz NOT NULL DEFAULT now(), "
                    f"PRIMARY KEY (line, {key_names}))")
        _create(conn, "linewatch_ship_marks", _MARKS)
        _create(conn, "linewatch_fleet_qa", _FLEET_QA)
        _create(conn, "linewatch_fleet_open_alarms", _FLEET_ALARMS)


def _create(conn: psycopg.Connection[Any], name: str, ddl: str) -> None:
    if conn.execute("SELECT to_regclass(%s) IS NULL", [name]).fetchone() == (True,):
        conn.execute(ddl)


@dataclass
class Mark:
    """How far a line's table has shipped: the highest row id, and the latest change time shipped (`changed`)."""

    last_id: int = 0
    changed_ns: int = 0


def read_marks(conn: psycopg.Connection[Any], line: str) -> dict[str, Mark]:
    with conn.transaction():
        rows = conn.execute("SELECT source, last_id, changed_ns FROM linewatch_ship_marks WHERE line = %s",
                            [line]).fetchall()
    marks = {t.source: Mark() for t in SHIPPED}
    marks.update({source: Mark(int(last_id), int(changed)) for source, last_id, changed in rows})
    return marks


def upsert(conn: psycopg.Connection[Any], line: str, table: Shipped, rows: list[dict[str, Any]],
           mark: Mark) -> None:
    """Upsert `rows` of one table and move its mark to `mark`, in one transaction."""
    names = [name for name, _ in table.keys]
    columns = ["line", *names, *([] if "id" in names else ["id"]), "t_ns", "row"]
    sql = (f"INSERT INTO {table.target} ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))}) "
           f"ON CONFLICT (line, {', '.join(names)}) DO UPDATE SET id = EXCLUDED.id, t_ns = EXCLUDED.t_ns, "
           f"row = EXCLUDED.row, shipped_at = now() WHERE {table.target}.row IS DISTINCT FROM EXCLUDED.row")
    if "id" in names:
        sql = sql.replace("SET id = EXCLUDED.id, ", "SET ")
    values = [[line, *(r[n] for n in names), *([] if "id" in names else [r["id"]]), r.get(table.t_column),
               Jsonb(r, dumps=_json)] for r in rows]
    with conn.transaction(), conn.cursor() as cur:
        if values:
            cur.executemany(sql, values)
        cur.execute("INSERT INTO linewatch_ship_marks (line, source, last_id, changed_ns) VALUES (%s, %s, %s, %s) "
                    "ON CONFLICT (line, source) DO UPDATE SET last_id = EXCLUDED.last_id, "
                    "changed_ns = EXCLUDED.changed_ns, updated_at = now()",
                    [line, table.source, mark.last_id, mark.changed_ns])


def _json(row: dict[str, Any]) -> str:
    """A row as JSON for `jsonb`: an infinite REAL (SQLite keeps one, jsonb refuses it) becomes null rather than
    stall shipping on that row."""
    return orjson.dumps(row).decode()
