"""Roles and the one permission table: which role each route of the web app needs.

Roles are ordered: each may do what the ones below it may (an admin can set a lot). `READ` marks a
read-only view, open to the configured viewer level (`security.viewer`); every route that changes
state names a role. A route missing from the table is refused to everyone (the auth middleware
answers 403 "declares no role"), and tests/test_security_routes.py fails until it is added here.
"""

from __future__ import annotations

from typing import Literal

Role = Literal["operator", "qa", "engineer", "admin"]
ROLES: tuple[Role, ...] = ("operator", "qa", "engineer", "admin")
#: Each level: anonymous (0), then the roles in order. `READ` resolves to the viewer level at run time.
LEVELS: dict[str, int] = {"anonymous": 0, **{role: i + 1 for i, role in enumerate(ROLES)}}
READ = "read"  # a read-only view: the viewer level decides
PUBLIC = "public"  # always open: sign-in, the HMI's files, liveness
SIGNED_IN = "operator"  # any signed-in user

#: (method, route path) -> who may call it: PUBLIC, READ or the lowest role.
PERMISSIONS: dict[tuple[str, str], str] = {
    ("GET", "/"): PUBLIC,
    ("GET", "/static"): PUBLIC,
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/livez"): PUBLIC,  # the line's liveness for Kubernetes: names hung processes, nothing else
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/api/openapi.json"): READ,
    ("GET", "/api/docs"): READ,
    ("GET", "/api/docs/oauth2-redirect"): READ,
    ("GET", "/api/docs/assets"): READ,  # Swagger UI's files (fastapi-offline)
    ("GET", "/api/session"): PUBLIC,  # who is signed in on this browser (nobody is an answer)
    ("POST", "/api/session"): PUBLIC,  # sign in
    ("DELETE", "/api/session"): PUBLIC,  # sign out (nothing to do without a session)
    ("PUT", "/api/session"): SIGNED_IN,  # still here: the HMI's touches keep the session from its idle lock
    ("POST", "/api/session/password"): SIGNED_IN,
    ("GET", "/api/status"): READ,
    ("GET", "/api/inspections"): READ,
    ("GET", "/api/alarms"): READ,
    ("GET", "/api/cameras/{camera}/live.jpg"): READ,
    ("GET", "/api/events"): READ,
    ("GET", "/api/lot"): READ,
    ("GET", "/api/drift"): READ,
    ("GET", "/api/inspections/{inspection_id}/heatmap.png"): READ,
    ("GET", "/api/report"): READ,
    ("GET", "/api/counters"): READ,
    ("GET", "/api/line"): READ,
    ("GET", "/api/recipes"): READ,
    ("GET", "/api/review/queue"): READ,
    ("GET", "/api/inspections/{inspection_id}"): READ,
    ("GET", "/api/inspections/{inspection_id}/image"): READ,
    ("GET", "/api/notify"): READ,  # delivery state only: never a secret or a hook's URL
    ("GET", "/images"): READ,
    ("GET", "/metrics"): READ,
    ("PUT", "/api/lot"): "operator",
    ("POST", "/api/lot"): "operator",
    ("POST", "/api/inspections/{inspection_id}/review"): "operator",
    ("POST", "/api/alarms/{alarm_id}/ack"): "operator",
    ("POST", "/api/cameras/{camera}/trigger"): "operator",
    ("POST", "/api/counters/reset"): "operator",
    ("POST", "/api/line/pause"): "operator",
    ("POST", "/api/line/resume"): "operator",
    ("POST", "/api/line/recipe"): "operator",
    ("POST", "/api/drift/{camera}/relearn"): "engineer",
    ("POST", "/api/retrain"): "engineer",
    ("GET", "/api/retrain"): READ,
    ("GET", "/api/retrain/{run_id}"): READ,
    ("GET", "/api/audit"): "qa",
    ("GET", "/api/users"): "admin",
    ("GET", "/api/sessions"): "admin",
    ("DELETE", "/api/sessions/{session_id}"): "admin",
}

#: The command line works on the data directory's files: whoever runs it needs the service account's access
#: (data_dir and auth.db are 0700/0600), which is the admin's on the appliance. Listed for docs/security.md.
COMMANDS: dict[str, str] = {
    "linewatch users add|list|passwd|disable": "admin (service account)",
    "linewatch tokens add|list|revoke": "admin (service account)",
    "linewatch tls self-signed": "admin (service account)",
    "linewatch run, report, drift, models, data, train, retrain, plc, worker, ship, fleet":
        "engineer (service account)",
}


def required_level(rule: str, viewer: str) -> int:
    """The level a rule asks for: 0 for public, the viewer level for a read-only view, else the role's."""
    if rule == PUBLIC:
        return 0
    return LEVELS[viewer] if rule == READ else LEVELS[rule]


def roles_table() -> str:
    """The permission table as Markdown (docs/security.md holds this text; a test checks it)."""
    lines = ["| method | route | who |", "|---|---|---|"]
    who = {PUBLIC: "everyone", READ: "viewer level (`security.viewer`)"}
    for (method, path), rule in sorted(PERMISSIONS.items(), key=lambda item: (item[0][1], item[0][0])):
        lines.append(f"| {method} | `{path}` | {who.get(rule, rule if rule == ROLES[-1] else rule + ' and above')} |")
    lines += ["", "| command | who |", "|---|---|"]
    lines += [f"| `{command}` | {who_} |".replace("|list", "\\|list").replace("|passwd", "\\|passwd")
              .replace("|disable", "\\|disable").replace("|revoke", "\\|revoke") for command, who_ in COMMANDS.items()]
    return "\n".join(lines)
