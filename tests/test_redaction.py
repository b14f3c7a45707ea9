"""What never gets logged or exported: a corpus of fake secrets through every output, and retry storms."""

from __future__ import annotations

import json
import secrets
import string
import subprocess
import threading
import time
import uuid

import httpx
import psycopg
import pytest
import structlog
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from dtc_otel import Redactor, RetryLog, summarize
from dtc_otel._redaction import luhn_valid
from dtc_otel.audit import sign_stripe
from tests.conftest import BIN, free_port, wait_http

ALNUM = string.ascii_letters + string.digits


def _random(length: int, alphabet: str = ALNUM) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))


def _luhn_number(prefix: str, length: int) -> str:
    body = prefix + "".join(secrets.choice(string.digits) for _ in range(length - len(prefix) - 1))
    for check in string.digits:
        if luhn_valid(body + check):
            return body + check
    raise AssertionError("no Luhn check digit")


def _jwt() -> str:
    return f"eyJhbGciOiJIUzI1NiJ9.eyJ{_random(30)}.{_random(43, ALNUM + '_-')}"


def build_corpus() -> dict:
    """Fresh fake secrets of every supported kind, in the places they appear in real text."""
    secrets_in_text = []

    def add(secret: str, text: str | None = None) -> None:
        secrets_in_text.append((secret, text or secret))

    for prefix in ("sk_live_", "sk_live_", "rk_live_", "sk_test_", "rk_test_"):
        add(f"{prefix}{_random(24)}")
    for _ in range(2):
        add(f"whsec_{_random(32)}")
    for prefix in ("AKIA", "AKIA", "ASIA", "AIDA"):
        add(prefix + _random(16, string.ascii_uppercase + string.digits))
    for prefix in ("ghp_", "gho_", "ghs_", "ghu_"):
        add(prefix + _random(36))
    for _ in range(2):
        add("github_pat_" + _random(40, ALNUM + "_"))
    add("xoxb-" + _random(12, string.digits) + "-" + _random(24))
    add("xoxp-" + _random(12, string.digits) + "-" + _random(24))
    hook = _random(24)
    add(hook, f"https://hooks.slack.com/services/T{_random(8)}/B{_random(8)}/{hook}")
    for _ in range(3):
        add("AIza" + _random(35, ALNUM + "_-"))
    for _ in range(3):
        token = _jwt()
        add(token)
    for _ in range(3):
        token = _random(40, ALNUM + "-._~")
        add(token, f"Authorization: Bearer {token}")
    for _ in range(2):
        token = _random(24, ALNUM + "+/") + "=="
        add(token, f"Authorization: Basic {token}")
    for kind in ("RSA", "EC"):
        body = _random(64, ALNUM + "+/")
        add(body, f"-----BEGIN {kind} PRIVATE KEY-----\n{body}\n-----END {kind} PRIVATE KEY-----")
    for scheme in ("postgresql", "mysql", "redis", "amqp"):
        password = _random(18)
        add(password, f"{scheme}://app:{password}@db.internal:5432/app")
    for parameter in ("X-Amz-Signature", "X-Amz-Credential", "X-Goog-Signature", "sig", "token", "access_token"):
        value = _random(32)
        add(value, f"https://storage.example.com/file.pdf?expires=3600&{parameter}={value}&v=2")
    for number in (_luhn_number("4", 16), _luhn_number("51", 16), _luhn_number("37", 15), _luhn_number("6011", 16)):
        add(number, f"card {number} charged")
    spaced = _luhn_number("4", 16)
    add(spaced, f"card {' '.join(spaced[i:i + 4] for i in range(0, 16, 4))} charged")
    for name in ("password", "api_key", "client_secret", "access_token"):
        value = _random(20)
        add(value, f"connecting with {name}={value} now")

    keyed = {
        "password": "kb" + _random(20),
        "api_key": "kb" + _random(20),
        "client_secret": "kb" + _random(20),
        "session": "kb" + _random(20),
        "cookie": "kb" + _random(20),
        "authorization": "kb" + _random(20),
        "X-Api-Key": "kb" + _random(20),
        "privateKey": "kb" + _random(20),
        "card_number": "kb" + _random(20),
        "refresh_token": "kb" + _random(20),
    }
    return {
        "values": [text for _, text in secrets_in_text],
        "secrets": [secret for secret, _ in secrets_in_text] + list(keyed.values()),
        "keyed": keyed,
        "url_password": "up" + _random(20),
        "url_signature": "us" + _random(30),
        "url_token": "ut" + _random(30),
    }


ORDINARY = [
    "the author wrote it",
    "authority check passed",
    "quote 44 approved for customer 7",
    "order 1234 5678 9012 3456",
    "invoice 115400 paid",
    "token_count=12",
    "GET /quotes/44 200",
    "4bf92f3577b34da6a3ce929d0e0e4736",
    "prt_9d15d0ec7b8d457c",
]


class TestRedactorUnits:
    def test_corpus_has_enough_kinds(self) -> None:
        """The corpus contains at least 60 secrets."""
        assert len(build_corpus()["secrets"]) >= 60

    def test_every_corpus_secret_masked(self) -> None:
        """Each value-pattern secret disappears from its surrounding text."""
        redactor = Redactor()
        corpus = build_corpus()
        for text in corpus["values"]:
            masked = redactor.redact_text(text)
            leaked = [s for s in corpus["secrets"] if s in masked]
            assert not leaked, f"leaked from {text[:30]!r}"

    def test_keyed_values_masked_by_name(self) -> None:
        """Values under secret-naming keys are masked whatever they look like."""
        corpus = build_corpus()
        masked = Redactor().redact_mapping(corpus["keyed"])
        assert set(masked.values()) == {"[REDACTED]"}

    @pytest.mark.parametrize("text", ORDINARY)
    def test_ordinary_text_untouched(self, text: str) -> None:
        """Ordinary words, IDs and non-Luhn digit runs stay readable."""
        assert Redactor().redact_text(text) == text

    @pytest.mark.parametrize("key", ["author", "authority", "quote_id", "request_id", "token_count", "keyboard"])
    def test_ordinary_keys_not_sensitive(self, key: str) -> None:
        """Keys that merely contain a secret word's letters are not masked."""
        assert not Redactor().is_sensitive_key(key)

    def test_configured_keys_and_allow_list(self) -> None:
        """Extra keys are masked, allowed keys are not, extra patterns apply."""
        redactor = Redactor(extra_keys=["pin"], allowed_keys=["session"], extra_patterns=[r"EMP-\d{6}"])

        assert redactor.is_sensitive_key("pin")
        assert not redactor.is_sensitive_key("session")
        assert redactor.redact_text("employee EMP-123456 joined") == "employee [REDACTED] joined"

    @pytest.mark.parametrize(
        "text",
        ["token=tok_abcdef123456", "note token=tok_abcdef123456 here", "token: tok_abcdef123456", "X-Amz-Signature=abcdef123456&v=1"],
    )
    def test_parameters_without_question_mark(self, text: str) -> None:
        """A secret parameter at the start of a bare query string or in free text is masked."""
        masked = Redactor().redact_text(text)

        assert "abcdef123456" not in masked

    def test_multiword_extra_key_inside_longer_keys(self) -> None:
        """An extra key of two words also matches keys that contain it."""
        redactor = Redactor(extra_keys=["tax_number"])

        for key in ("tax_number", "customer_tax_number", "app.tax_number", "vendorTaxNumber"):
            assert redactor.is_sensitive_key(key), key
        assert not redactor.is_sensitive_key("tax_rate")

    def test_optional_email_and_phone(self) -> None:
        """E-mail addresses and phone numbers are masked only when turned on."""
        text = "contact jane.doe@example.com or +44 20 7946 0958"

        assert Redactor().redact_text(text) == text
        masked = Redactor(emails=True, phones=True).redact_text(text)
        assert "jane.doe@example.com" not in masked
        assert "7946" not in masked

    def test_invalid_extra_pattern_rejected(self) -> None:
        """A broken extra pattern raises, naming the pattern."""
        with pytest.raises(ValueError, match=r"invalid redaction pattern '\('"):
            Redactor(extra_patterns=["("])

    def test_summary_keeps_identity(self) -> None:
        """summarize() keeps id and status, counts keys and bytes, drops the rest."""
        summary = summarize({"id": 5, "status": "paid", "items": list(range(100))})

        assert summary["id"] == 5
        assert summary["status"] == "paid"
        assert summary["keys"] == 3
        assert "items" not in summary


@pytest.fixture
def leak_app(launch, receiver, database_url, tmp_path):
    corpus = build_corpus()
    secrets_file = tmp_path / "corpus.json"
    secrets_file.write_text(json.dumps(corpus))
    migrate = subprocess.run(
        [str(BIN / "dtc-otel"), "migrate"], env={"DTC_OTEL_DATABASE_URL": database_url, "PATH": str(BIN)},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert migrate.returncode == 0, migrate.stderr
    port = free_port()
    app = launch(
        ["python", "svc.py"],
        PORT=str(port),
        SVC_WEBHOOK_SECRET="whsec_corpus_test_secret",
        SVC_SECRETS_FILE=str(secrets_file),
        DTC_OTEL_DATABASE_URL=database_url,
    )
    wait_http(f"http://127.0.0.1:{port}/pong")
    return f"http://127.0.0.1:{port}", app, database_url, corpus


def _audit_text(url: str) -> str:
    with psycopg.connect(url) as conn:
        parts = []
        for table in ("job_queue", "job_events", "webhook_logs", "audit_markers", "checkpoints", "audit_events"):
            columns = "to_jsonb(t) - 'raw_body'" if table == "webhook_logs" else "to_jsonb(t)"
            parts += [json.dumps(row[0]) for row in conn.execute(f"SELECT {columns} FROM dtc_audit.{table} t")]
    return "\n".join(parts)


def test_corpus_never_leaves_the_process(leak_app, receiver) -> None:
    """No corpus secret reaches log output, OTLP bytes, audit rows or NOTIFY payloads; ordinary text does."""
    base, app, url, corpus = leak_app
    notifications: list[str] = []
    stop = threading.Event()

    def listen() -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("LISTEN dtc_otel_audit")
            while not stop.is_set():
                for note in conn.notifies(timeout=0.2):
                    notifications.append(note.payload)

    sse_text: list[str] = []

    def follow_stream() -> None:
        # Every live event, as a browser would receive it.
        try:
            with httpx.stream("GET", f"{base}/events", params={"topic": "*"}, timeout=httpx.Timeout(5, read=3.0)) as response:
                for line in response.iter_lines():
                    sse_text.append(line)
                    if stop.is_set():
                        return
        except httpx.HTTPError:
            pass

    listener = threading.Thread(target=listen)
    listener.start()
    stream = threading.Thread(target=follow_stream)
    stream.start()
    time.sleep(0.5)
    keyed = corpus["keyed"]
    webhook_body = json.dumps({"id": "evt_leak", "type": "payment.succeeded", "data": {"quote_id": 5}}).encode()
    headers = {
        **sign_stripe("whsec_corpus_test_secret", int(time.time()), webhook_body),
        "Authorization": f"Bearer {keyed['authorization']}",
        "Cookie": f"session={keyed['session']}",
        "Content-Type": "application/json",
    }

    assert httpx.post(f"{base}/leak", timeout=20).json() == {"ok": True}
    assert httpx.post(f"{base}/webhooks/payments", content=webhook_body, headers=headers).status_code == 200
    receiver.wait_for(lambda spans: any(s.name == "job leak_job" for s in spans) and any(s.attributes.get("http.route") == "/webhooks/payments" for s in spans))
    app.wait_for_line("large payload")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "leak_job" not in _audit_text(url):
        time.sleep(0.2)
    time.sleep(1.0)
    stop.set()
    listener.join(5)
    stream.join(5)

    outputs = {
        "log output": app.output(),
        "OTLP bytes": b"".join(receiver.bodies).decode("latin-1"),
        "audit rows": _audit_text(url),
        "NOTIFY payloads": "\n".join(notifications),
        "SSE events": "\n".join(sse_text),
    }
    secrets_list = corpus["secrets"] + [corpus["url_password"], corpus["url_signature"], corpus["url_token"]]
    for where, text in outputs.items():
        leaked = [secret for secret in secrets_list if secret in text]
        assert not leaked, f"{len(leaked)} secrets leaked into {where}"
    assert "leak_job" in outputs["audit rows"]
    assert "message carrying" in outputs["log output"]
    assert "quote_id" in outputs["NOTIFY payloads"]
    assert "leak_job" in outputs["SSE events"] or "quote:77" in outputs["SSE events"], "the live stream delivered nothing"
    assert "keyed fields" in outputs["log output"]
    large = next(json.loads(line) for line in app.lines if "large payload" in line)
    assert large["payload"]["summary"] == "dict"
    assert large["payload"]["id"] == 9


class TestRetryAggregation:
    def test_tight_loop_gives_bounded_lines(self) -> None:
        """1,000 failing attempts in a tight loop: first decision, a few summaries, the outcome; 1,000 span events."""
        exporter = InMemorySpanExporter()
        # The SDK keeps 128 events per span unless OTEL_SPAN_EVENT_COUNT_LIMIT sets another limit.
        provider = TracerProvider(span_limits=SpanLimits(max_events=2000))
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        lines = structlog.testing.LogCapture()
        structlog.configure(processors=[lines], cache_logger_on_first_use=False)
        retry_log = RetryLog("charge_card", summary_interval=0.5, partner="halo")
        try:
            with provider.get_tracer("t").start_as_current_span("checkout"):
                started = time.monotonic()
                for attempt in range(1, 1001):
                    retry_log.retrying(attempt, ConnectionError(f"refused, token=sk_live_{'a' * 24}"), 0.001)
                    time.sleep(0.002)
                retry_log.gave_up(1001, ConnectionError("refused"))
                elapsed = time.monotonic() - started
        finally:
            structlog.reset_defaults()

        events = [entry["event"] for entry in lines.entries]
        assert elapsed < 10
        assert events[0] == "retrying"
        assert lines.entries[0]["attempt"] == 1
        assert events[-1] == "giving up"
        assert lines.entries[-1]["attempt"] == 1001
        summaries = [entry for entry in lines.entries if entry["event"] == "still retrying"]
        assert 1 <= len(summaries) <= int(elapsed / 0.5) + 2
        assert sum(entry["attempts"] for entry in summaries) <= 999
        assert all("sk_live_" not in str(entry) for entry in lines.entries)
        span = exporter.get_finished_spans()[0]
        assert len([e for e in span.events if e.name == "retry attempt"]) == 1001

    def test_tenacity_hooks_log_decision_once(self) -> None:
        """With tenacity, a retry logs once with the attempt number and the give-up logs once."""
        from tenacity import retry, stop_after_attempt, wait_fixed

        lines = structlog.testing.LogCapture()
        structlog.configure(processors=[lines], cache_logger_on_first_use=False)
        retry_log = RetryLog("fetch_rates")
        calls = {"n": 0}

        @retry(stop=stop_after_attempt(3), wait=wait_fixed(0.01), before_sleep=retry_log.before_sleep,
               retry_error_callback=retry_log.give_up)  # fmt: skip
        def fetch() -> None:
            calls["n"] += 1
            raise TimeoutError("partner slow")

        try:
            with pytest.raises(TimeoutError):
                fetch()
        finally:
            structlog.reset_defaults()

        assert calls["n"] == 3
        assert [entry["event"] for entry in lines.entries] == ["retrying", "giving up"]
        assert lines.entries[0]["attempt"] == 1
        assert lines.entries[0]["error_type"] == "TimeoutError"
        assert lines.entries[1]["attempt"] == 3


def test_clean_attributes_kept_on_masked_span() -> None:
    """A span with clean attributes and a secret in its exception event keeps its attributes."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter as Memory

    from dtc_otel._span_redaction import redact_spans

    exporter = Memory()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("t").start_as_current_span("work", attributes={"quote_id": 44, "route": "/quotes"}) as span:
        span.add_event("exception", {"exception.message": "failed with sk_live_" + "b" * 24})

    redacted = redact_spans(exporter.get_finished_spans())[0]

    assert dict(redacted.attributes) == {"quote_id": 44, "route": "/quotes"}
    assert "sk_live_" not in str(redacted.events[0].attributes)


def test_every_aws_key_prefix_masked() -> None:
    """AWS key IDs of every prefix are masked, also with no digit that would trigger a scan."""
    redactor = Redactor()

    for prefix in ("AKIA", "ASIA", "AGPA", "AIDA", "AROA", "ANPA", "ANVA", "AIPA"):
        key = prefix + _random(16, string.ascii_uppercase)
        assert redactor.redact_text(f"key {key} used") == "key [REDACTED] used", prefix


def test_hex_ids_skip_scan_cards_masked() -> None:
    """UUIDs and hex IDs skip the rules, yet a card number made of hex digits and dashes is still masked."""
    redactor = Redactor()
    card = _luhn_number("4", 16)

    for value in (str(uuid.uuid4()), uuid.uuid4().hex, "deadbeef-0042"):
        assert redactor.redact_text(value) == value
    assert redactor.redact_text(card) == "[REDACTED]"
    assert redactor.redact_text(f"{card[:4]}-{card[4:8]}-{card[8:12]}-{card[12:]}") == "[REDACTED]"
    assert redactor.redact_text(f"ref{card}") == "ref[REDACTED]"
    assert redactor.redact_text(f"card {card}, expires 12/29") == "card [REDACTED], expires 12/29"
    # A space is no hex separator, so this value takes the full scan.
    assert redactor.redact_text(f"{card[:4]} {card[4:8]} {card[8:12]} {card[12:]}") == "[REDACTED]"


def test_luhn_digits_inside_trace_ids_kept() -> None:
    """A trace ID, traceparent or hash whose digits happen to pass the Luhn check stays whole, alone or in text."""
    redactor = Redactor()
    # 034923450141773275 inside this trace ID passes the Luhn check.
    trace_id = "93b0ff7e034923450141773275b85975"
    traceparent = f"00-{trace_id}-fdc37fd4f6be560d-01"
    assert luhn_valid("034923450141773275")

    for value in (trace_id, traceparent, f"trace {trace_id} failed", f"see https://jaeger.local/trace/{trace_id}"):
        assert redactor.redact_text(value) == value
        assert redactor.redact({"traceparent": value}) == {"traceparent": value}


def test_repeated_secret_masked_from_cache() -> None:
    """Short values are scanned once and kept, and the kept result is the masked one."""
    redactor = Redactor()
    token = "sk_live_" + _random(24)

    results = {redactor.redact_text(f"key={token}") for _ in range(3)}

    assert results == {"key=[REDACTED]"}
    assert redactor.redact(["quote:44", "quote:44"]) == ["quote:44", "quote:44"]


def test_text_cache_bounded() -> None:
    from dtc_otel import _redaction

    redactor = Redactor()
    for index in range(_redaction._TEXT_CACHE_SIZE * 2 + 10):
        redactor.redact_text(f"topic:quote:{index}")

    assert len(redactor._text_cache) <= _redaction._TEXT_CACHE_SIZE


def test_json_dumps_audit_values() -> None:
    """Compact JSON for every value an audit row may hold, with the standard library as fallback."""
    from datetime import datetime, timezone
    from decimal import Decimal

    from dtc_otel._json import dumps

    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert dumps({"quote_id": 44, "amount": Decimal("12.50"), "at": at, 7: "x"}) == (
        '{"quote_id":44,"amount":"12.50","at":"2026-01-02T03:04:05+00:00","7":"x"}'
    )
    # Wider than 64 bits: orjson rejects it, so the standard library writes it.
    assert dumps({"n": 2**70}) == '{"n":1180591620717411303424}'
    assert dumps({"ratio": float("nan")}) == '{"ratio":null}'
    assert json.loads(dumps({"text": "line\nbreak \u00e9"})) == {"text": "line\nbreak \u00e9"}


def test_google_key_ending_in_dash_masked() -> None:
    """A Google API key may end in a dash, where no word boundary follows."""
    redactor = Redactor()
    key = "AIza" + _random(34, ALNUM + "_-") + "-"

    assert redactor.redact_text(f"key {key} used") == "key [REDACTED] used"
    assert redactor.redact_text(key) == "[REDACTED]"
