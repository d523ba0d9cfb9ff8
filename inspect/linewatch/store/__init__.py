"""The store: one SQLite file with one writer (record) and read-only readers, beside the image archive.

Columns keep the contracts' names (`camera`, `seq`, `final`, `decided_by`, ...) so a QA engineer's
SQL reads like the documentation. `schema` (tables, migrations), `rows` (the inspection row's one
shape), `writer` (record's statements), `queries` (read-only access), `actions` (an operator's action
sent to record and its audit row awaited), `images` (the archive), `delivery` (the notify process's own
state file beside the store). Each is imported from its own module: the package itself imports nothing, so a
reader (infer, acquire, plc) does not load sqlite-utils and the migrations, which only record needs.
"""

DB_NAME = "linewatch.db"  # in the line's data_dir, beside its -wal and -shm files
