"""Demo mode: serve the portal, send a short scripted series of requests over HTTP, print a summary."""

import asyncio
import json
import sys
import time
import uuid
from dataclasses import dataclass

import httpx
import uvicorn

import audit_hooks
import payment_webhooks

STARTUP_TIMEOUT_SECONDS = 60.0  # generous, because startup can include initdb of a new embedded Postgres
REQUESTS_TIMEOUT_SECONDS = 30.0
REQUEST_TIMEOUT_SECONDS = 10.0
JAEGER_URL = "http://127.0.0.1:16686"
# Signs the demo's forged delivery, which the portal must reject with 401.
WRONG_WEBHOOK_SECRET = "whsec_not_the_portal_secret"


@dataclass
class Outcome:
    label: str
    method: str
    path: str
    expected_status: int
    # The "status" field expected in the JSON body, where the status code alone is ambiguous.
    expected_result: str | None = None
    status: int | None = None
    result: str | None = None
    request_id: str | None = None
    error: str | None = None

    @property
    def as_expected(self) -> bool:
        if self.status != self.expected_status:
            return False
        return self.expected_result is None or self.result == self.expected_result


class DemoClient:
    """Sends the demo requests and keeps one Outcome for each."""

    def __init__(self, client: httpx.AsyncClient):
        self.client = client
        self.outcomes: list[Outcome] = []

    async def send(
        self,
        label: str,
        method: str,
        path: str,
        expected_status: int,
        json: dict | None = None,
        *,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        expected_result: str | None = None,
    ) -> dict:
        """Send one request and return its JSON body, or {} when there is none.

        *content* sends raw bytes instead of *json*, for signed webhook bodies.
        """
        outcome = Outcome(label, method, path, expected_status, expected_result)
        self.outcomes.append(outcome)
        try:
            response = await self.client.request(method, path, json=json, content=content, headers=headers)
        except httpx.HTTPError as exc:
            outcome.error = f"{type(exc).__name__}: {exc}"
            return {}

        outcome.status = response.status_code
        outcome.request_id = response.headers.get("X-Request-ID")
        try:
            body = response.json()
        except ValueError:
            return {}
        if not isinstance(body, dict):
            return {}
        result = body.get("status")
        outcome.result = result if isinstance(result, str) else None
        return body


def signed_webhook_headers(secret: str, body: bytes) -> dict[str, str]:
    return {"Content-Type": "application/json", **audit_hooks.sign_stripe(secret, int(time.time()), body)}


async def send_payment_webhooks(demo: DemoClient, invoice_id: int, audit_enabled: bool) -> None:
    """Deliver one payment.succeeded event for *invoice_id*, then the same delivery again, then a forged one.

    Each demo run uses a new event ID, so that a second run against the same
    database is not taken for a repeat of the first.
    """
    event_id = f"evt_demo_{uuid.uuid4().hex[:16]}"
    event = {
        "id": event_id,
        "type": "payment.succeeded",
        "data": {"invoice_id": invoice_id, "charge_id": f"ch_{event_id}"},
    }
    body = json.dumps(event, separators=(",", ":")).encode()
    forged = {"id": f"{event_id}_forged", "type": "payment.succeeded", "data": {"invoice_id": invoice_id}}
    forged_body = json.dumps(forged, separators=(",", ":")).encode()
    secret = payment_webhooks.webhook_secret()
    path = "/webhooks/payments"

    if not audit_enabled:
        # The route returns 503 while the audit trail is off.
        headers = signed_webhook_headers(secret, body)
        await demo.send("payment webhook (audit trail off)", "POST", path, 503, content=body, headers=headers)
        return

    headers = signed_webhook_headers(secret, body)
    await demo.send(
        "payment webhook, invoice of quote 44",
        "POST",
        path,
        200,
        content=body,
        headers=headers,
        expected_result="processed",
    )
    await demo.send(
        "same webhook delivered again",
        "POST",
        path,
        200,
        content=body,
        headers=headers,
        expected_result="duplicate",
    )
    await demo.send(
        "webhook with a bad signature",
        "POST",
        path,
        401,
        content=forged_body,
        headers=signed_webhook_headers(WRONG_WEBHOOK_SECRET, forged_body),
    )


async def send_demo_requests(demo: DemoClient, audit_enabled: bool) -> None:
    """Send the scripted requests, each depending only on earlier responses.

    That is 21 requests with the audit trail on, and 19 with it off.
    """
    await demo.send("health check", "GET", "/healthz", 200)
    await demo.send("read a quote", "GET", "/quotes/42", 200)
    approval_42 = await demo.send("approve quote 42", "POST", "/quotes/42/approve", 200)
    approval_44 = await demo.send("approve quote 44 (discounted)", "POST", "/quotes/44/approve", 200)

    invoice_42 = approval_42.get("invoice", {}).get("id")
    invoice_44 = approval_44.get("invoice", {}).get("id")
    if invoice_42 is not None:
        await demo.send("read invoice of quote 42", "GET", f"/invoices/{invoice_42}", 200)
        await demo.send("pay invoice of quote 42", "POST", f"/invoices/{invoice_42}/payments", 201, json={})
    if invoice_44 is not None:
        await demo.send("read invoice of quote 44", "GET", f"/invoices/{invoice_44}", 200)
        await demo.send(
            "pay with a declined card (partner 422)",
            "POST",
            f"/invoices/{invoice_44}/payments",
            502,
            json={"payment_method": "tok_declined"},
        )
        await send_payment_webhooks(demo, invoice_44, audit_enabled)
        # With the audit trail on, the webhook has paid the invoice.
        invoice_status = "paid" if audit_enabled else "open"
        await demo.send(
            f"read invoice of quote 44 again ({invoice_status})",
            "GET",
            f"/invoices/{invoice_44}",
            200,
            expected_result=invoice_status,
        )

    await demo.send("live page state, quote 44", "GET", "/quotes/44/live/state?customer_id=7", 200)
    await demo.send("live page state, other customer", "GET", "/quotes/44/live/state?customer_id=8", 403)
    await demo.send("missing quote", "GET", "/quotes/999", 404)
    await demo.send("quote over partner limit (partner 422)", "POST", "/quotes/43/approve", 502)
    await demo.send("partner desk down (partner 503)", "POST", "/quotes/45/approve", 502)
    await demo.send("unhandled error in the portal", "POST", "/quotes/46/approve", 500)
    await demo.send("exchange rate (sync route, httpx.get)", "GET", "/exchange-rates/CHF", 200)
    await demo.send("approve quote 42 again", "POST", "/quotes/42/approve", 409)
    if invoice_42 is not None:
        await demo.send("read paid invoice", "GET", f"/invoices/{invoice_42}", 200)


async def serve(server: uvicorn.Server) -> int:
    """Run the server until it stops. Return 0, or uvicorn's exit code if it failed to start."""
    # uvicorn calls sys.exit() when startup fails (lifespan error, port in use). Caught here,
    # SystemExit ends this task instead of escaping the event loop.
    try:
        await server.serve()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


async def wait_until_started(server: uvicorn.Server, server_task: asyncio.Task, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not server.started:
        if server_task.done() or time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def bound_port(server: uvicorn.Server, requested_port: int) -> int:
    """Return the port the server listens on, which differs from the requested one for port 0."""
    for listener in server.servers:
        for sock in listener.sockets:
            return sock.getsockname()[1]
    return requested_port


def client_host(host: str) -> str:
    """Map a wildcard listen address to the loopback address of the same family."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def print_summary(base_url: str, outcomes: list[Outcome], timed_out: bool, app) -> None:
    out = sys.stderr
    print(f"\nPortal demo: {len(outcomes)} requests to {base_url}", file=out)
    for outcome in outcomes:
        status = str(outcome.status) if outcome.status is not None else "---"
        expected = f"expected {outcome.expected_status} {outcome.expected_result or ''}".rstrip()
        mark = "ok" if outcome.as_expected else expected
        line = f"  {status}  {mark:<12} {outcome.method:<4} {outcome.path:<28} {outcome.label}"
        if outcome.request_id:
            line += f"  X-Request-ID: {outcome.request_id}"
        if outcome.error:
            line += f"  ({outcome.error})"
        print(line, file=out)

    if timed_out:
        print(f"\nTimed out after {REQUESTS_TIMEOUT_SECONDS:.0f} s, before all demo requests were sent.", file=out)
    if not any(outcome.request_id for outcome in outcomes):
        print(
            "\nThe portal sent no X-Request-ID headers. To find a request's spans,"
            " take the trace_id field from its JSON log lines.",
            file=out,
        )
    print(
        "\nWhere to look:\n"
        f"  Jaeger at {JAEGER_URL}, when the collector stack from collector/compose.yaml runs\n"
        "  or `dtc-otel receive`, started before the demo, which prints the spans it receives",
        file=out,
    )
    print_live_page_hint(base_url, app, out)
    if getattr(app.state, "audit_enabled", False):
        print_audit_hints(app, out)


def print_live_page_hint(base_url: str, app, out) -> None:
    """Print where the live quote page is, which the demo itself only reads as JSON."""
    print(
        "\nLive quote page (start the portal without --demo, with --port for these URLs; the demo\n"
        "left quotes 42 and 44 paid, so add --reset to watch them change again):\n"
        f"  {base_url}/quotes/44/live?customer_id=7   as customer 7\n"
        f"  {base_url}/quotes/44/live?support=1       as support staff\n"
        "  customer_id and support=1 in the URL stand in for a login.",
        file=out,
    )
    if not getattr(app.state, "live_enabled", False):
        print("  Live updates were off in this run; the page then shows the state at load time only.", file=out)


def print_audit_hints(app, out) -> None:
    """Print the commands and SQL that show what the demo wrote to the audit tables."""
    schema = audit_hooks.schema
    print(
        f"\nAudit tables in schema {schema} (docs/audit.md has the SQL for more questions):\n"
        "  dtc-otel stuck                  jobs pending, running or retrying for over 5 minutes\n"
        "  dtc-otel entity quote_id=44     every audit row of quote 44, then its trace IDs\n"
        "  the retried job of quote 44, attempt by attempt:\n"
        f"    SELECT e.occurred_at, e.kind, e.transition, e.attempt, e.error FROM {schema}.job_events e\n"
        f"      JOIN {schema}.job_queue j USING (job_id) WHERE j.entity_ids @> '{{\"quote_id\": 44}}' ORDER BY e.id;\n"
        "  the webhook deliveries, with the duplicate and the bad signature:\n"
        f"    SELECT id, provider_event_id, signature_valid, signature_reason, duplicate_of, status_code\n"
        f"      FROM {schema}.webhook_logs ORDER BY id DESC LIMIT 3;\n"
        f"  the welcome marker: SELECT * FROM {schema}.audit_markers WHERE name = 'portal_welcome_sent';\n"
        "  The audit tables are a durable record: --demo resets the quotes but keeps earlier runs'\n"
        "  audit rows, so these show every run, oldest first; this run's rows are the newest.",
        file=out,
    )
    if app.state.embedded_database:
        print(
            "  The embedded database stopped with the demo. To query it, run the portal without --demo\n"
            f"  and, while it runs, set DTC_OTEL_DATABASE_URL='{app.state.database_url}' in another terminal.",
            file=out,
        )
    else:
        print("  Run these with DTC_OTEL_DATABASE_URL set as for this demo, or in psql.", file=out)


async def run_demo(app, host: str, port: int) -> int:
    """Serve `app`, send the demo requests, print the summary and shut down.

    Returns the exit code: 0 when every request returned its expected status, else 1.
    """
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port))
    server_task = asyncio.create_task(serve(server))
    outcomes: list[Outcome] = []
    timed_out = False
    try:
        if not await wait_until_started(server, server_task, STARTUP_TIMEOUT_SECONDS):
            print("\nPortal demo: the portal did not start. See the log lines above.", file=sys.stderr)
            return 1

        base_url = str(httpx.URL(scheme="http", host=client_host(host), port=bound_port(server, port)))
        async with httpx.AsyncClient(base_url=base_url, timeout=REQUEST_TIMEOUT_SECONDS) as client:
            demo = DemoClient(client)
            outcomes = demo.outcomes
            try:
                async with asyncio.timeout(REQUESTS_TIMEOUT_SECONDS):
                    await send_demo_requests(demo, getattr(app.state, "audit_enabled", False))
            except TimeoutError:
                timed_out = True
    finally:
        server.should_exit = True
        await server_task

    print_summary(base_url, outcomes, timed_out, app)
    unexpected = [outcome for outcome in outcomes if not outcome.as_expected]
    if unexpected:
        print(f"\nPortal demo: {len(unexpected)} requests did not return the expected status.", file=sys.stderr)
    return 1 if unexpected or timed_out else 0
