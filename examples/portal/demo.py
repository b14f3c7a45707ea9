"""Demo mode: serve the portal, send a short scripted series of requests over HTTP, print a summary."""

import asyncio
import sys
import time
from dataclasses import dataclass

import httpx
import uvicorn

STARTUP_TIMEOUT_SECONDS = 60.0  # generous, because startup can include initdb of a new embedded Postgres
REQUESTS_TIMEOUT_SECONDS = 30.0
REQUEST_TIMEOUT_SECONDS = 10.0
JAEGER_URL = "http://127.0.0.1:16686"


@dataclass
class Outcome:
    label: str
    method: str
    path: str
    expected_status: int
    status: int | None = None
    request_id: str | None = None
    error: str | None = None

    @property
    def as_expected(self) -> bool:
        return self.status == self.expected_status


class DemoClient:
    """Sends the demo requests and keeps one Outcome for each."""

    def __init__(self, client: httpx.AsyncClient):
        self.client = client
        self.outcomes: list[Outcome] = []

    async def send(self, label: str, method: str, path: str, expected_status: int, json: dict | None = None) -> dict:
        """Send one request and return its JSON body, or {} when there is none."""
        outcome = Outcome(label, method, path, expected_status)
        self.outcomes.append(outcome)
        try:
            response = await self.client.request(method, path, json=json)
        except httpx.HTTPError as exc:
            outcome.error = f"{type(exc).__name__}: {exc}"
            return {}

        outcome.status = response.status_code
        outcome.request_id = response.headers.get("X-Request-ID")
        try:
            body = response.json()
        except ValueError:
            return {}
        return body if isinstance(body, dict) else {}


async def send_demo_requests(demo: DemoClient) -> None:
    """Send the scripted requests: 15 in all, each depending only on earlier responses."""
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


def print_summary(base_url: str, outcomes: list[Outcome], timed_out: bool) -> None:
    out = sys.stderr
    print(f"\nPortal demo: {len(outcomes)} requests to {base_url}", file=out)
    for outcome in outcomes:
        status = str(outcome.status) if outcome.status is not None else "---"
        mark = "ok" if outcome.as_expected else f"expected {outcome.expected_status}"
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
                    await send_demo_requests(demo)
            except TimeoutError:
                timed_out = True
    finally:
        server.should_exit = True
        await server_task

    print_summary(base_url, outcomes, timed_out)
    unexpected = [outcome for outcome in outcomes if not outcome.as_expected]
    if unexpected:
        print(f"\nPortal demo: {len(unexpected)} requests did not return the expected status.", file=sys.stderr)
    return 1 if unexpected or timed_out else 0
