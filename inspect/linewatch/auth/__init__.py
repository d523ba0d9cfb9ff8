"""Who may do what: users and roles, API tokens, sessions, the permission table and the audit log
(docs/security.md)."""
