"""The store: one SQLite file with one writer (record) and read-only readers, beside the image archive.

Columns keep the contracts' names (`camera`, `seq`, `final`, `decided_by`, ...) so a QA engineer's
SQL reads like the documentation. `schema` (tables, migrations), `rows` (the inspection row's one
shape), `writer` (record's statements), `queries` (read-only access), `actions` (an operator's action
sent to record and its audit row awaited), `images` (the archive), `delivery` (the notify process's own
state file beside the store).
"""

from linewatch.store.queries import current_lot, current_recipe, offline_cameras, open_reader, read_rows
from linewatch.store.rows import (
    COMMIT_TIMES,
    JSON_COLUMNS,
    ROW_COLUMNS,
    VERDICT_COLUMNS,
    VIEW_COLUMNS,
    committed_values,
    row_to_api,
    select_inspections,
    verdict_row,
    verdict_values,
)
from linewatch.store.schema import (
    DB_NAME,
    INSPECTION_COLUMNS,
    MIGRATIONS,
    WAL_BACKSTOP_PAGES,
    SchemaError,
    applied_version,
    backup,
    open_writer,
)
from linewatch.store.writer import (
    ActionError,
    Checkpointer,
    CommitRow,
    apply_action,
    clear_alarms,
    insert_alarm,
    insert_commit,
    insert_rows,
    insert_verdicts,
    mark_pruned,
    next_commit_id,
    register_model,
)

__all__ = [
    "COMMIT_TIMES",
    "DB_NAME",
    "INSPECTION_COLUMNS",
    "JSON_COLUMNS",
    "MIGRATIONS",
    "ROW_COLUMNS",
    "VERDICT_COLUMNS",
    "VIEW_COLUMNS",
    "WAL_BACKSTOP_PAGES",
    "ActionError",
    "Checkpointer",
    "CommitRow",
    "SchemaError",
    "applied_version",
    "apply_action",
    "backup",
    "clear_alarms",
    "committed_values",
    "current_lot",
    "current_recipe",
    "insert_alarm",
    "insert_commit",
    "insert_rows",
    "insert_verdicts",
    "mark_pruned",
    "next_commit_id",
    "offline_cameras",
    "open_reader",
    "open_writer",
    "read_rows",
    "register_model",
    "row_to_api",
    "select_inspections",
    "verdict_row",
    "verdict_values",
]
