"""record: the single writer — verdict rows, the deadline watch, kept images, retention, the full disk."""
