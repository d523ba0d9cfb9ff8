"""ship: the line's results in a central PostgreSQL, for the whole plant (docs/fleet.md).

`linewatch ship` (or the line's `ship` process, `ship.enabled`) follows the line's SQLite store read-only and
upserts its inspections, alarms and audit rows into PostgreSQL, keyed by the line. SQLite stays the source of
truth: ship never writes it, and the line inspects the same whether PostgreSQL is there or not.
"""
