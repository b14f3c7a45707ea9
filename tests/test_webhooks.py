"""Inbound webhooks under dtc-otel-run: raw body kept, signatures checked, duplicates found, outcome recorded."""

from __future__ import annotations

import json
import subprocess
import time

import httpx
import psycopg
import pytest

from dtc_otel.audit import sign_stripe
from tests.conftest import BIN, free_port, wait_http

SECRET = "whsec_test_secret_for_portal"


@pytest.fixture
def webhook_app(launch, receiver, database_url):
    migrate = subprocess.run(
        [str(BIN / "dtc-otel"), "migrate"], env={"DTC_OTEL_DATABASE_URL": database_url, "PATH": str(BIN)},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert migrate.returncode == 0, migrate.stderr
    port = free_port()
    app = launch(["python", "svc.py"], PORT=str(port), SVC_WEBHOOK_SECRET=SECRET, DTC_OTEL_DATABASE_URL=database_url)
    wait_http(f"http://127.0.0.1:{port}/pong")
    return f"http://127.0.0.1:{port}", app, database_url


def _post(base: str, payload: object, *, secret: str = SECRET, raw: bytes | None = None, headers: dict | None = None) -> httpx.Response:
    body = raw if raw is not None else json.dumps(payload, separators=(",", ":")).encode()
    signed = sign_stripe(secret, int(time.time()), body) if headers is None else headers
    return httpx.post(f"{base}/webhooks/payments", content=body, headers={**signed, "Content-Type": "application/json"})


def _rows(url: str, delay: float = 0.0) -> list[dict]:
    deadline = time.monotonic() + 10
    while True:
        with psycopg.connect(url) as conn:
            conn.row_factory = psycopg.rows.dict_row
            rows = conn.execute("SELECT * FROM dtc_audit.webhook_logs ORDER BY id").fetchall()
        if all(r["processed_at"] is not None or not r["signature_valid"] for r in rows) or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def test_valid_delivery_recorded_with_outcome(webhook_app) -> None:
    """A signed delivery is stored byte for byte, then marked with the handler's status and entity."""
    base, _, url = webhook_app
    raw = b'{"id":"evt_1","type":"payment.succeeded","data":{"quote_id":44},  "note":"spaces kept"}'

    response = _post(base, None, raw=raw)

    assert response.status_code == 200
    assert response.json() == {"status": "processed"}
    row = _rows(url)[0]
    assert bytes(row["raw_body"]) == raw
    assert row["signature_valid"] is True
    assert row["signature_reason"] == "ok"
    assert row["provider_event_id"] == "evt_1"
    assert row["event_type"] == "payment.succeeded"
    assert row["status_code"] == 200
    assert row["entity_ids"] == {"quote_id": 44}
    assert row["processed_at"] is not None
    assert "v1=" not in row["headers"]["stripe-signature"], "the signature was stored"
    assert len(row["trace_id"]) == 32


def test_duplicate_delivery_points_at_first(webhook_app) -> None:
    """The second delivery of one event ID is stored with duplicate_of and reported to the handler."""
    base, _, url = webhook_app
    payload = {"id": "evt_dup", "type": "payment.succeeded", "data": {"quote_id": 7}}

    first = _post(base, payload)
    second = _post(base, payload)

    assert first.json() == {"status": "processed"}
    assert second.json() == {"status": "duplicate"}
    rows = _rows(url)
    assert rows[1]["duplicate_of"] == rows[0]["id"]
    assert rows[0]["duplicate_of"] is None


def test_retry_after_failure_is_processed(webhook_app) -> None:
    """A repeat of a delivery whose handler failed is processed again, not called a duplicate."""
    base, _, url = webhook_app
    payload = {"id": "evt_retry", "type": "explode", "data": {"quote_id": 5}}

    first = _post(base, payload)
    _rows(url)
    second = _post(base, {**payload, "type": "payment.succeeded"})

    assert first.status_code == 500
    assert second.json() == {"status": "processed"}
    rows = _rows(url)
    assert rows[0]["superseded"] is True
    assert rows[1]["retry_of"] == rows[0]["id"]
    assert rows[1]["duplicate_of"] is None


@pytest.mark.parametrize(
    ("kind", "status", "reason"),
    [
        ("wrong_secret", 401, "no_matching_signature"),
        ("no_header", 401, "missing_headers"),
        ("too_large", 413, "payload_too_large"),
        ("not_json", 400, "unparsable_body"),
    ],
)
def test_rejected_delivery_recorded_with_reason(webhook_app, kind: str, status: int, reason: str) -> None:
    """A delivery that fails verification is kept with its reason and never reaches the handler."""
    base, app, url = webhook_app
    payload = {"id": f"evt_{kind}", "type": "payment.succeeded", "data": {"quote_id": 1}}
    if kind == "wrong_secret":
        response = _post(base, payload, secret="whsec_other")
    elif kind == "no_header":
        response = _post(base, payload, headers={})
    elif kind == "too_large":
        response = _post(base, {**payload, "blob": "x" * 5000})
    else:
        response = _post(base, None, raw=b"{not json")

    assert response.status_code == status
    assert len(response.headers["x-request-id"]) == 32
    row = _rows(url)[0]
    assert row["signature_valid"] is False
    assert row["signature_reason"] == reason
    assert row["status_code"] == status
    assert SECRET not in app.output()


def test_handler_error_recorded(webhook_app) -> None:
    """A handler that raises leaves the delivery with status 500 and the error."""
    base, _, url = webhook_app

    response = _post(base, {"id": "evt_x", "type": "explode", "data": {"quote_id": 3}})

    assert response.status_code == 500
    row = _rows(url)[0]
    assert row["status_code"] == 500
    assert "handler failed on purpose" in row["processing_error"]


def test_job_in_request_and_cli(webhook_app) -> None:
    """A job run in a request is mirrored; `dtc-otel entity` and `stuck` read the tables."""
    base, _, url = webhook_app

    job_id = httpx.post(f"{base}/jobs/44").json()["job_id"]

    deadline = time.monotonic() + 10
    status = None
    while time.monotonic() < deadline and status != "succeeded":
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT status FROM dtc_audit.job_queue WHERE job_id = %s", (job_id,)).fetchone()
        status = row[0] if row else None
        time.sleep(0.1)
    assert status == "succeeded"
    env = {"DTC_OTEL_DATABASE_URL": url, "PATH": str(BIN)}
    entity = subprocess.run([str(BIN / "dtc-otel"), "entity", "quote_id=44"], env=env, capture_output=True, text=True, timeout=30)
    assert entity.returncode == 0, entity.stderr
    assert job_id in entity.stdout
    log_lines = [line for line in entity.stdout.splitlines() if "change in job_queue" in line]
    assert len(log_lines) >= 3, entity.stdout
    assert all(job_id in line for line in log_lines)
    assert "trace(s)" in entity.stdout
    stuck = subprocess.run([str(BIN / "dtc-otel"), "stuck", "--older-than", "0"], env=env, capture_output=True, text=True, timeout=30)
    assert stuck.returncode == 0
    assert job_id not in stuck.stdout
    doctor = subprocess.run([str(BIN / "dtc-otel"), "doctor"], env={**env, "OTEL_TRACES_EXPORTER": "none"}, capture_output=True, text=True, timeout=30)
    assert "[ok] migrations" in doctor.stdout
    assert "[ok] database" in doctor.stdout
