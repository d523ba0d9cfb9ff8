"""The loop from operators' review decisions to a better model on the running line (docs/data.md)."""
