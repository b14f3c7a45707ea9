"""The portal's live quote page in headless Chromium: badges follow published events without a reload.

The portal runs under dtc-otel-run against a fresh database. The browser is
Debian's Chromium (``apt-get install chromium``), driven by Playwright's Python
client; Playwright's own browser downloads are not used.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dtc_otel.audit import sign_stripe
from tests.conftest import free_port, wait_http

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WEBHOOK_SECRET = "whsec_live_page_test"
# Quote 42 belongs to customer 7 in the portal's seed rows; customer 8 owns other quotes.
QUOTE_ID = 42
OWNER = 7
OTHER_CUSTOMER = 8
# Playwright timeouts are in milliseconds.
UPDATE_TIMEOUT_MS = 10_000

# Installed on the page under test: every text the payment badge shows, in order.
RECORD_BADGE_TEXTS = """() => {
    const badge = document.querySelector('[data-testid="payment-badge"]');
    window.badgeTexts = [badge.textContent];
    new MutationObserver(() => window.badgeTexts.push(badge.textContent))
        .observe(badge, { childList: true, characterData: true, subtree: true });
}"""

# Opens an EventSource from the page and reports whether it opened or was rejected.
TRY_EVENT_SOURCE = """(url) => new Promise((resolve) => {
    const source = new EventSource(url);
    const timer = setTimeout(() => { source.close(); resolve("timeout"); }, 5000);
    source.onopen = () => { clearTimeout(timer); source.close(); resolve("open"); };
    source.onerror = () => {
        clearTimeout(timer);
        const rejected = source.readyState === EventSource.CLOSED;
        source.close();
        resolve(rejected ? "rejected" : "retrying");
    };
})"""


@pytest.fixture(scope="module")
def browser() -> Iterator:
    """One headless Chromium for the module, or a skip when Chromium or Playwright is missing."""
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the playwright package is not installed: pip install -e '.[dev]'"
    )
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium package (apt-get install chromium)")

    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=30_000)
        yield launched
        launched.close()


@pytest.fixture
def page_context(browser) -> Iterator:
    context = browser.new_context()
    yield context
    context.close()


@pytest.fixture
def portal(launch, database_url: str) -> Iterator[str]:
    """Start the portal under dtc-otel-run with live events on; yield its base URL.

    The portal is stopped with SIGTERM afterwards, so that its lifespan stops the
    partner process it started (the launch fixture's SIGKILL would leave it running).
    """
    port = free_port()
    app = launch(
        ["python", "examples/portal/app.py", "--port", str(port)],
        cwd=ROOT,
        DTC_OTEL_DATABASE_URL=database_url,
        DTC_OTEL_LOG_FORMAT="json",
        PORTAL_WEBHOOK_SECRET=WEBHOOK_SECRET,
    )
    base_url = f"http://127.0.0.1:{port}"
    wait_http(f"{base_url}/healthz", timeout=60)

    started = [line for line in app.json_lines() if line.get("event") == "portal started"]
    assert started, f"no 'portal started' line; output:\n{app.output()}"
    assert started[0].get("live") is True, f"live events are off; output:\n{app.output()}"
    yield base_url

    app.stop()
    assert any(line.get("event") == "partner API stopped" for line in app.json_lines()), app.output()


def approve(base_url: str, quote_id: int) -> dict:
    """Approve *quote_id*; return its new invoice."""
    response = httpx.post(f"{base_url}/quotes/{quote_id}/approve", timeout=15)
    assert response.status_code == 200, response.text
    return response.json()["invoice"]


def post_payment_webhook(base_url: str, invoice_id: int) -> httpx.Response:
    """Deliver a signed payment.succeeded event for *invoice_id*, as the payment provider would."""
    event = {"id": f"evt_live_{uuid.uuid4().hex[:16]}", "type": "payment.succeeded", "data": {"invoice_id": invoice_id}}
    body = json.dumps(event, separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json", **sign_stripe(WEBHOOK_SECRET, int(time.time()), body)}
    return httpx.post(f"{base_url}/webhooks/payments", content=body, headers=headers, timeout=15)


def without_repeats(texts: list[str]) -> list[str]:
    collapsed: list[str] = []
    for text in texts:
        if not collapsed or collapsed[-1] != text:
            collapsed.append(text)
    return collapsed


def test_badges_follow_events_without_reload(portal: str, page_context) -> None:
    """Approval, job chain and payment webhook change the badges of an open page, for customer and support."""
    from playwright.sync_api import expect

    page = page_context.new_page()
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    page.goto(f"{portal}/quotes/{QUOTE_ID}/live?customer_id={OWNER}")

    badge = page.get_by_test_id("payment-badge")
    expect(page.get_by_test_id("viewer")).to_have_text(f"Customer {OWNER}")
    expect(page.get_by_test_id("live-status")).to_have_attribute("data-state", "live", timeout=UPDATE_TIMEOUT_MS)
    expect(badge).to_have_text("Not invoiced yet")
    expect(page.get_by_test_id("payment-spinner")).to_be_visible()
    expect(page.get_by_test_id("payment-form")).to_be_hidden()
    expect(page.get_by_test_id("tracker-text")).to_have_text("Waiting for approval")
    page.evaluate(RECORD_BADGE_TEXTS)

    invoice = approve(portal, QUOTE_ID)

    expect(page.get_by_test_id("payment-form")).to_be_visible(timeout=UPDATE_TIMEOUT_MS)
    assert invoice["currency"] == "EUR"
    invoice_amount = f"\N{EURO SIGN}{invoice['amount_cents'] / 100:,.2f}"
    expect(page.get_by_test_id("amount")).to_have_text(invoice_amount, timeout=UPDATE_TIMEOUT_MS)
    expect(page.get_by_test_id("payment-spinner")).to_be_hidden()
    expect(badge).to_have_text("Awaiting payment")
    expect(page.get_by_test_id("tracker-text")).to_have_text("Ready to Pay", timeout=UPDATE_TIMEOUT_MS)

    support = page_context.new_page()
    support.goto(f"{portal}/quotes/{QUOTE_ID}/live?support=1")
    expect(support.get_by_test_id("live-status")).to_have_attribute("data-state", "live", timeout=UPDATE_TIMEOUT_MS)
    expect(support.get_by_test_id("viewer")).to_have_text(f"Support view of customer {OWNER}'s quote")
    expect(support.get_by_test_id("payment-badge")).to_have_text("Awaiting payment")

    response = post_payment_webhook(portal, invoice["id"])
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "processed"

    expect(badge).to_have_text("Paid", timeout=UPDATE_TIMEOUT_MS)
    expect(support.get_by_test_id("payment-badge")).to_have_text("Paid", timeout=UPDATE_TIMEOUT_MS)
    expect(page.get_by_test_id("payment-done")).to_be_visible()
    expect(page.get_by_test_id("payment-form")).to_be_hidden()
    expect(page.get_by_test_id("tracker-text")).to_have_text("Paid, thank you")

    texts = without_repeats(page.evaluate("window.badgeTexts"))
    assert texts == ["Not invoiced yet", "Awaiting payment", "Recording payment", "Paid"]
    assert navigations == [f"{portal}/quotes/{QUOTE_ID}/live?customer_id={OWNER}"], "the page was reloaded"

    # A page opened after the payment shows it from the state it loads with.
    later = page_context.new_page()
    later.goto(f"{portal}/quotes/{QUOTE_ID}/live?customer_id={OWNER}")
    expect(later.get_by_test_id("payment-badge")).to_have_text("Paid", timeout=UPDATE_TIMEOUT_MS)
    expect(later.get_by_test_id("tracker-text")).to_have_text("Paid, thank you")


def test_other_customer_cannot_follow(portal: str, page_context) -> None:
    """Another customer's page shows an error and its EventSource is rejected; support's opens."""
    from playwright.sync_api import expect

    page = page_context.new_page()
    page.goto(f"{portal}/quotes/{QUOTE_ID}/live?customer_id={OTHER_CUSTOMER}")

    error = page.get_by_test_id("page-error")
    expect(error).to_be_visible(timeout=UPDATE_TIMEOUT_MS)
    expect(error).to_contain_text(f"customer {OTHER_CUSTOMER} may not view quote {QUOTE_ID}")
    expect(error).to_contain_text("HTTP 403")
    expect(page.get_by_test_id("live-status")).to_have_attribute("data-state", "error")
    expect(page.get_by_test_id("payment-badge")).to_be_hidden()

    # The owner's page, with its stream request rewritten to another customer: the server rejects
    # the stream after the state loaded, and the page shows why.
    def as_other_customer(route) -> None:
        route.continue_(url=route.request.url.replace(f"customer_id={OWNER}", f"customer_id={OTHER_CUSTOMER}"))

    rewritten = page_context.new_page()
    rewritten.route("**/events?*", as_other_customer)
    rewritten.goto(f"{portal}/quotes/{QUOTE_ID}/live?customer_id={OWNER}")
    expect(rewritten.get_by_test_id("live-status")).to_have_attribute("data-state", "rejected", timeout=UPDATE_TIMEOUT_MS)
    expect(rewritten.get_by_test_id("page-error")).to_contain_text(
        f"Live updates rejected: not allowed to follow these topics: quote:{QUOTE_ID} (HTTP 403)"
    )
    expect(rewritten.get_by_test_id("payment-badge")).to_have_text("Not invoiced yet")

    rejected = page.evaluate(TRY_EVENT_SOURCE, f"/events?topic=quote:{QUOTE_ID}&customer_id={OTHER_CUSTOMER}")
    assert rejected == "rejected"
    opened = page.evaluate(TRY_EVENT_SOURCE, f"/events?topic=quote:{QUOTE_ID}&support=1")
    assert opened == "open"
    own = page.evaluate(TRY_EVENT_SOURCE, f"/events?topic=quote:{QUOTE_ID}&customer_id={OWNER}")
    assert own == "open"


# (query of GET /events, expected status): only the quote's customer and support may follow.
EVENTS_CASES = [
    ({"topic": f"quote:{QUOTE_ID}", "customer_id": str(OTHER_CUSTOMER)}, 403),
    ({"topic": f"customer:{OWNER}", "customer_id": str(OTHER_CUSTOMER)}, 403),
    ({"topic": "*", "customer_id": str(OWNER)}, 403),
    ({"topic": "*", "support": "1"}, 403),
    ({"topic": "invoice:1", "customer_id": str(OWNER)}, 403),
    ({"topic": "quote:999", "customer_id": str(OWNER)}, 403),
    ({"topic": f"quote:{QUOTE_ID}"}, 403),
    ({"topic": f"quote:{QUOTE_ID}", "customer_id": "seven"}, 403),
    ({"topic": f"quote:{QUOTE_ID}", "customer_id": str(OWNER)}, 200),
    ({"topic": f"customer:{OWNER}", "customer_id": str(OWNER)}, 200),
    ({"topic": f"customer:{OTHER_CUSTOMER}", "support": "1"}, 200),
]


def test_events_and_state_authorization(portal: str) -> None:
    """GET /events and the page's state request open only for the quote's customer and for support."""
    for query, expected_status in EVENTS_CASES:
        with httpx.stream("GET", f"{portal}/events", params=query, timeout=10) as response:
            assert response.status_code == expected_status, query

    url = f"{portal}/quotes/{QUOTE_ID}/live/state"
    assert httpx.get(url, timeout=10).status_code == 401
    assert httpx.get(url, params={"customer_id": "0"}, timeout=10).status_code == 401
    assert httpx.get(url, params={"customer_id": str(OTHER_CUSTOMER)}, timeout=10).status_code == 403
    assert httpx.get(f"{portal}/quotes/999/live/state", params={"support": "1"}, timeout=10).status_code == 404

    state = httpx.get(url, params={"customer_id": str(OWNER)}, timeout=10).json()
    assert state["customer_id"] == OWNER
    assert state["payment"] == "not_invoiced"
    assert state["jobs"] == "waiting"
    assert state["live"] is True
    assert isinstance(state["last_event_id"], int)
