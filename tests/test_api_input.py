"""Bad input never gets a 500: each finding of the schemathesis run of issue 24, as a regression test. Bodies that
are not UTF-8, ids past 64 bits, a body over the cap (refused before it is read), bounded error answers, and one
`Allow` per path."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from linewatch.api.app import create_app
from linewatch.api.qa import LOT_PATTERN
from linewatch.config import parse_config
from linewatch.wire import LotError, check_lot
from tests.api_harness import bearer, seed_store, served_api

NOT_UTF8 = b'{"actor": "op\xff\xfe", "lot": "A\xc3", "decision": "PASS", "reviewer": "op"}'
BODY_ROUTES = [("put", "/api/lot"), ("post", "/api/lot"), ("post", "/api/inspections/1/review")]


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    seed_store(tmp_path)
    return TestClient(create_app(parse_config({"data_dir": str(tmp_path), "api": {"max_body_bytes": 4096}})),
                      headers=bearer(tmp_path))


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, bytes]]:
    """A real uvicorn with a 4 KiB body cap (record running: actions commit), and an admin's Authorization header."""
    with served_api(tmp_path_factory.mktemp("live"), {"max_body_bytes": 4096}) as (url, cfg):
        (name, value), = bearer(cfg.data_dir).items()
        yield url, f"{name}: {value}\r\n".encode()


@pytest.mark.parametrize(("method", "path"), BODY_ROUTES)
@pytest.mark.parametrize("content_type", ["application/json", None])
def test_a_body_that_is_not_utf8_is_refused_by_name(client: TestClient, method: str, path: str,
                                                    content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    r = client.request(method, path, content=NOT_UTF8, headers=headers)
    if content_type:
        assert r.status_code == 400, r.text
        assert r.json() == {"detail": "request body is not UTF-8: byte 0xff at offset 13 (invalid start byte)"}
    else:  # FastAPI validated the raw bytes as the model and failed turning them into the 422: a 500
        assert r.status_code == 415, r.text
        assert "application/json" in r.json()["detail"]


@pytest.mark.parametrize(
    ("body", "status", "loc"),
    [
        (b'{"lot": "A1", "note": "op"', 422, ["body", 26]),  # JSON cut short
        (b'{"lot": "\\ud800"}', 422, ["body", "lot"]),  # a lone surrogate cannot be sent on as UTF-8
        (b'{"lot": "A\\u0000B\\u001b[31m"}', 422, ["body", "lot"]),  # the lot rule, as on the PLC
        (b'{"lot": " A1"}', 422, ["body", "lot"]),
    ],
)
def test_a_lot_body_is_checked_before_the_store(client: TestClient, body: bytes, status: int, loc: list[Any]) -> None:
    r = client.put("/api/lot", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    assert r.json()["detail"][0]["loc"] == loc


@pytest.mark.parametrize("path", ["/api/alarms/{}/ack", "/api/inspections/{}/review",
                                  "/api/inspections/{}/heatmap.png"])
@pytest.mark.parametrize("row_id", ["2719446982830570053042176", str(2**63), "0", "-1"])
def test_an_id_past_64_bits_or_below_1_is_a_422(client: TestClient, path: str, row_id: str) -> None:
    method = "get" if path.endswith(".png") else "post"
    r = client.request(method, path.format(row_id), json={"decision": "PASS"})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["path", "alarm_id" if "alarms" in path else "inspection_id"]


def test_the_largest_id_is_looked_up_and_not_found(client: TestClient) -> None:
    r = client.get(f"/api/inspections/{2**63 - 1}/heatmap.png")
    assert r.status_code == 404 and r.json() == {"detail": f"no inspection {2**63 - 1}"}


def test_an_error_answer_never_echoes_a_large_input(client: TestClient) -> None:
    big = "x" * 900  # four of them within the 4 KiB cap, each far over its field's limit
    for method, path in BODY_ROUTES:
        r = client.request(method, path, json={"lot": big, "actor": big, "reviewer": big, "decision": big})
        assert r.status_code == 422, r.text
        assert len(r.content) < 1000 and big not in r.text, (path, len(r.content))  # a message may quote a part
    r = client.get("/api/inspections", params={"camera": big})
    assert r.status_code == 422 and len(r.content) < 1000
    small = client.get("/api/inspections", params={"limit": "abc"}).json()["detail"][0]
    assert small["input"] == "abc"  # a small input is still shown, it helps


def test_a_report_with_a_bad_window_is_a_422_in_the_validation_shape(client: TestClient) -> None:
    r = client.get("/api/report", params={"from": "", "to": "2026-11-28"})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["query", "from"]
    r = client.get("/api/report", params={"from": "2026-11-28", "to": "2026-11-27"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "to"]


@pytest.mark.parametrize(("t_from", "t_to"), [("0001-01-01", "9999-12-31"), ("3000-01-01", "4000-01-01"),
                                               ("0001-01-01T00:00:00+23:59", "2026-01-01T00:00:00.123456789Z")])
def test_a_report_window_past_what_the_store_holds_is_answered(client: TestClient, t_from: str, t_to: str) -> None:
    r = client.get("/api/report", params={"from": t_from, "to": t_to, "format": "json"})
    assert r.status_code == 200, r.text


def _raw(url: str, request: bytes, wait_s: float = 5.0) -> tuple[bytes, float]:
    """Send `request` on a fresh loopback connection; the answer (until the server closes) and its time."""
    host, port = url.removeprefix("http://").split(":")
    t0 = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=wait_s) as s:
        s.sendall(request)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return answer, time.monotonic() - t0


def test_a_100_mb_body_is_refused_413_before_it_is_read(live: tuple[str, bytes]) -> None:
    head = (b"PUT /api/lot HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000000\r\n\r\n")
    answer, took = _raw(live[0], head + b'{"lot": "')  # the 100 MB never comes: the answer may not wait for it
    status, _, rest = answer.partition(b"\r\n")
    assert status.startswith(b"HTTP/1.1 413 "), answer[:300]
    assert b"connection: close" in rest.lower()
    assert json.loads(rest.split(b"\r\n\r\n", 1)[1]) == {
        "detail": "request body of 100000000 bytes is over the 4096-byte limit (api.max_body_bytes)"}
    assert took < 2.0


def test_a_chunked_body_is_counted_as_it_arrives(live: tuple[str, bytes]) -> None:
    chunk = b"1000\r\n" + b" " * 4096 + b"\r\n"
    head = (b"POST /api/alarms/1/ack HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    answer, _ = _raw(live[0], head + chunk * 2)  # over the cap, never finished (no final 0-chunk)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]


def test_a_body_within_the_cap_still_works(live: tuple[str, bytes]) -> None:
    url, auth = live

    def put_lot(change: dict[str, str]) -> bytes:
        body = json.dumps(change).encode()
        return _raw(url, b"PUT /api/lot HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n%s"
                         b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (auth, len(body), body))[0]

    answer = put_lot({"lot": "A-1" + " " * 3000})
    assert answer.startswith(b"HTTP/1.1 422"), answer[:300]  # read and validated: a lot with trailing spaces
    answer = put_lot({"lot": "A-1"})
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]


@pytest.mark.parametrize(
    ("path", "allow"),
    [
        ("/api/lot", "GET, HEAD, POST, PUT"),  # was `Allow: GET`: only the first route of the path answered
        ("/api/status", "GET, HEAD"),
        ("/api/alarms/1/ack", "POST"),
        ("/api/inspections/1/heatmap.png", "GET, HEAD"),
        ("/healthz", "GET, HEAD"),
    ],
)
def test_allow_names_every_method_of_the_path(client: TestClient, path: str, allow: str) -> None:
    for method in ("OPTIONS", "DELETE", "PATCH"):
        r = client.request(method, path)
        assert r.status_code == 405 and r.headers["allow"] == allow, (method, r.headers)
    for method in allow.split(", "):
        assert client.request(method, path).status_code != 405, method


def test_head_answers_as_get_without_a_body(live: tuple[str, bytes]) -> None:
    for path in ("/api/status", "/api/lot", "/healthz", "/api/events"):  # the event stream too: it ends at once
        answer, took = _raw(live[0], f"HEAD {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and body in (b"", b"0\r\n\r\n"), (path, answer[:300])
        assert took < 2.0, path


@pytest.mark.parametrize("lot", ["A1", "LOT-2026-11-27/3", "Ä ö", "x" * 64, "a\u00a0b", "🙂"])
def test_the_lot_pattern_takes_what_check_lot_takes(lot: str) -> None:
    assert re.search(LOT_PATTERN, lot) and check_lot(lot) == lot


@pytest.mark.parametrize("lot", [" A1", "A1 ", "A\x00B", "A\x1b[31m", "A\nB", "\x85A", "A\u3000", "\t"])
def test_the_lot_pattern_refuses_what_check_lot_refuses(lot: str) -> None:
    assert not re.search(LOT_PATTERN, lot)
    with pytest.raises(LotError):
        check_lot(lot)


def test_the_schema_documents_every_refusal_of_every_route(tmp_path: Path) -> None:
    doc = create_app(parse_config({"data_dir": str(tmp_path)})).openapi()
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            codes = set(op["responses"])
            assert "413" in codes, (method, path)
            if "requestBody" in op:
                assert {"400", "415", "422"} <= codes, (method, path)
            if "{" in path:
                assert codes & {"404", "409"}, (method, path)
