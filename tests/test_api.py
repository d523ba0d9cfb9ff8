"""REST API on a real SQLite store: results, alarms, bad requests, images."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from linewatch.api.app import create_app
from linewatch.config import parse_config
from linewatch.store.images import image_relpath, save_kept, save_live
from linewatch.store.rows import verdict_row
from linewatch.store.schema import open_writer
from linewatch.store.writer import insert_alarm, insert_verdicts
from linewatch.wire import Alarm, Verdict


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    cfg = parse_config({"data_dir": str(tmp_path), "runtime_dir": str(tmp_path / "run")})
    db = open_writer(tmp_path)
    rows = []
    for seq, final in enumerate(["PASS", "PASS", "FAIL", "REVIEW", "PASS"]):
        v = Verdict("cam0", "s", seq, f"p{seq}", final, "model", t_capture_ns=1)  # type: ignore[arg-type]
        if final != "PASS":
            v.image = image_relpath("cam0", "s", seq, final)
            save_kept(tmp_path, v.image, np.full((8, 8), seq, np.uint8))
        rows.append(verdict_row(v, 2))
    insert_verdicts(db, rows)
    insert_alarm(db, Alarm("supervisor", "process_restart", "infer[0] died"))
    save_live(tmp_path, "cam0", np.zeros((8, 8), np.uint8))
    return TestClient(create_app(cfg))


def test_status_counts_and_last(client: TestClient) -> None:
    s = client.get("/api/status").json()
    assert s["counts"] == {"PASS": 3, "FAIL": 1, "REVIEW": 1, "total": 5}
    assert s["yield"] == pytest.approx(0.6)
    assert s["last"]["seq"] == 4 and s["alarms_active"] == 1


def test_inspections_filters_and_images(client: TestClient) -> None:
    fails = client.get("/api/inspections", params={"final": "FAIL"}).json()
    assert [r["seq"] for r in fails] == [2]
    img = client.get("/" + fails[0]["image"])
    assert img.status_code == 200 and img.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert [r["seq"] for r in client.get("/api/inspections", params={"limit": 2}).json()] == [4, 3]
    live = client.get("/api/cameras/cam0/live.jpg")
    assert live.status_code == 200 and live.headers["content-type"] == "image/jpeg"


def _raw_get(app: object, path: str) -> tuple[int, bytes]:
    """A GET with the path exactly as given, as uvicorn hands it over (HTTP clients normalise `..` away)."""
    sent: list[dict[str, object]] = []
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "headers": [], "root_path": "",
             "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 1)}

    async def exchange() -> None:
        requested, done = False, asyncio.Event()

        async def receive() -> dict[str, object]:
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await done.wait()  # the client hangs up only once the whole answer is in
            return {"type": "http.disconnect"}

        async def send(message: dict[str, object]) -> None:
            sent.append(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                done.set()

        await app(scope, receive, send)  # type: ignore[operator]

    asyncio.run(exchange())
    return int(sent[0]["status"]), b"".join(bytes(m.get("body", b"")) for m in sent[1:])  # type: ignore[arg-type]


def test_an_image_path_cannot_climb_out_of_the_archive(client: TestClient, tmp_path: Path) -> None:
    assert (tmp_path / "linewatch.db").is_file()  # what a traversal would serve
    kept = client.get("/api/inspections", params={"final": "FAIL"}).json()[0]["image"]
    assert _raw_get(client.app, "/" + kept)[0] == 200  # the raw path reaches the archive at all
    status, body = _raw_get(client.app, "/images/../linewatch.db")
    assert status == 404 and b"SQLite format" not in body


@pytest.mark.parametrize(
    ("url", "status", "text"),
    [
        ("/api/inspections?limit=0", 422, "greater than or equal to 1"),
        ("/api/inspections?limit=abc", 422, "valid integer"),
        ("/api/inspections?final=MAYBE", 422, "pattern"),
        ("/api/cameras/nope/live.jpg", 404, "unknown camera 'nope'"),
    ],
)
def test_bad_requests_get_clear_errors(client: TestClient, url: str, status: int, text: str) -> None:
    r = client.get(url)
    assert r.status_code == status
    assert text in r.text


def test_alarms_and_metrics(client: TestClient) -> None:
    alarms = client.get("/api/alarms", params={"active": True}).json()
    assert [a["kind"] for a in alarms] == ["process_restart"]
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/").headers["content-type"].startswith("text/html")
