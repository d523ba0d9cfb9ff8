"""Databases written before migrations moved onto sqlite-utils: their `schema_migrations` record is adopted,
their data kept, a backup taken first, and the next open changes nothing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import sqlite_utils

from linewatch.store import DB_NAME
from linewatch.store.rows import verdict_row
from linewatch.store.schema import MIGRATIONS, SchemaError, applied_version, open_writer
from linewatch.store.writer import insert_alarm
from linewatch.wire import Alarm, Verdict

KNOWN = len(MIGRATIONS.pending(sqlite_utils.Database(memory=True)))  # schema versions this linewatch has
LEGACY_NS = 1_700_000_000_123_456_000  # when the old runner applied each version (2023-11-14 22:13:20.123456)


def _legacy_database(data_dir: Path, version: int) -> sqlite_utils.Database:
    """A database as the hand-written runner left it at `version`: the same migrations, each recorded as
    (version, applied_ns) in its own `schema_migrations` table, no `_sqlite_migrations`."""
    data_dir.mkdir(parents=True, exist_ok=True)
    db = sqlite_utils.Database(sqlite3.connect(data_dir / DB_NAME, isolation_level=None))
    db.enable_wal()
    db.table("schema_migrations").create({"version": int, "applied_ns": int}, pk="version")
    for v, migration in enumerate(MIGRATIONS.pending(db)[:version], start=1):
        with db.atomic():
            migration.fn(db)
            db.table("schema_migrations").insert({"version": v, "applied_ns": LEGACY_NS + v})
    assert "_sqlite_migrations" not in db.table_names()
    return db


def _fill(db: sqlite_utils.Database, n: int) -> list[tuple[object, ...]]:
    """`n` inspections (the columns this schema version has), an alarm and a model; the inspections back."""
    columns = db.table("inspections").columns_dict
    rows = [verdict_row(Verdict("cam0", "s", seq, f"p{seq}", "FAIL" if seq % 3 == 0 else "PASS", "model",
                                probs={"good": 0.4, "defect": 0.6}, t_capture_ns=1_000 + seq), 3_000_000)
            for seq in range(n)]
    db.table("inspections").insert_all({k: v for k, v in r.items() if k in columns} for r in rows)
    insert_alarm(db, Alarm("supervisor", "process_restart", "infer[0] died"))
    db.table("models").insert({"sha256": "ab" * 32, "name": "reference", "path": "/m.onnx", "first_seen_ns": 1})
    return [tuple(r) for r in db.execute("SELECT * FROM inspections ORDER BY id").fetchall()]


@pytest.mark.parametrize("version", [1, 2, 3, 4])
def test_a_database_of_the_old_runner_is_adopted_migrated_backed_up_and_kept(tmp_path: Path, version: int) -> None:
    db = _legacy_database(tmp_path, version)
    before = _fill(db, 1200)
    db.close()
    assert not list(tmp_path.glob("*.bak"))

    db = open_writer(tmp_path)
    after = db.execute("SELECT * FROM inspections ORDER BY id").fetchall()
    width = len(before[0])
    assert [tuple(r[:width]) for r in after] == before  # every old value where it was, new columns empty
    assert all(set(r[width:]) <= {None} for r in after)
    assert db["alarms"].count == 1 and db["models"].count == 1
    assert "schema_migrations" not in db.table_names() and applied_version(db) == KNOWN
    applied = MIGRATIONS.applied(db)
    assert [m.name for m in applied] == [m.name for m in MIGRATIONS.pending(sqlite_utils.Database(memory=True))]
    # the old record kept: when each version was applied
    assert [m.applied_at for m in applied[:version]] == ["2023-11-14 22:13:20.123456+00:00"] * version
    assert db.execute("SELECT count(*) FROM inspections WHERE final != 'PASS'").fetchone()[0] == 400

    backups = list(tmp_path.glob(f"{DB_NAME}.v{version}-*.bak"))
    assert len(backups) == 1 and len(list(tmp_path.glob("*.bak"))) == 1
    old = sqlite3.connect(backups[0])  # taken before anything changed: the old runner's file as it was
    assert [tuple(r) for r in old.execute("SELECT * FROM inspections ORDER BY id")] == before
    assert old.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall() == [
        (v,) for v in range(1, version + 1)]
    assert old.execute("SELECT count(*) FROM sqlite_master WHERE name = '_sqlite_migrations'").fetchone()[0] == 0
    assert old.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    old.close()
    db.close()

    db = open_writer(tmp_path)  # the second open applies nothing and backs nothing up
    assert [(m.name, m.applied_at) for m in MIGRATIONS.applied(db)] == [(m.name, m.applied_at) for m in applied]
    assert db["_sqlite_migrations"].count == KNOWN and "schema_migrations" not in db.table_names()
    assert len(list(tmp_path.glob("*.bak"))) == 1
    assert db.execute("SELECT count(*) FROM inspections").fetchone()[0] == 1200
    db.close()


def test_an_empty_record_of_the_old_runner_is_dropped_without_a_backup(tmp_path: Path) -> None:
    """The old runner created its table before the first migration: a crash between left it empty."""
    _legacy_database(tmp_path, 0).close()
    db = open_writer(tmp_path)
    assert applied_version(db) == KNOWN and "schema_migrations" not in db.table_names()
    assert not list(tmp_path.glob("*.bak"))


def test_a_record_this_linewatch_does_not_know_is_refused_before_anything_changes(tmp_path: Path) -> None:
    db = _legacy_database(tmp_path, KNOWN)
    db.table("schema_migrations").insert({"version": KNOWN + 1, "applied_ns": LEGACY_NS})
    db.close()
    versions = ", ".join(str(v) for v in range(1, KNOWN + 2))
    with pytest.raises(SchemaError, match=rf"schema_migrations records versions \[{versions}\]; this linewatch "
                                          rf"knows 1 to {KNOWN}"):
        open_writer(tmp_path)
    assert not list(tmp_path.glob("*.bak"))
    check = sqlite3.connect(tmp_path / DB_NAME)
    assert check.execute("SELECT max(version) FROM schema_migrations").fetchone()[0] == KNOWN + 1
    assert check.execute("SELECT count(*) FROM sqlite_master WHERE name = '_sqlite_migrations'").fetchone()[0] == 0
    check.close()
