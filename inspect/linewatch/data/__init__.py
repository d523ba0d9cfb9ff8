"""The data registry: content-addressed, immutable snapshots of labelled datasets and their integrity checks
(docs/data.md)."""
