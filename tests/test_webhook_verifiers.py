"""Webhook signature verifiers: valid deliveries pass, every rejection has its reason code."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import time

import pytest

from dtc_otel.audit import _verifiers
from dtc_otel.audit._verifiers import (
    REASONS,
    StandardWebhooksVerifier,
    StripeSignatureVerifier,
    VerificationResult,
    WebhookVerifier,
    sign_standard_webhook,
    sign_stripe,
)

NOW = 1_700_000_000
BODY = b'{"type":"invoice.paid","data":{"id":"in_42","amount":1250}}'
MSG_ID = "msg_2b7Qz9dTcOtel"

STANDARD_KEY = b"dtc-otel standard test key 32 b!"
STANDARD_SECRET = "whsec_" + base64.b64encode(STANDARD_KEY).decode("ascii")
OTHER_STANDARD_SECRET = "whsec_" + base64.b64encode(b"another key that is not the one!").decode("ascii")

STRIPE_SECRET = "whsec_dtcOtelStripeTestSecret0123456789"
OTHER_STRIPE_SECRET = "whsec_someOtherStripeSecret9876543210"


def standard_headers(secret: str = STANDARD_SECRET, timestamp: int = NOW, body: bytes = BODY) -> dict[str, str]:
    return sign_standard_webhook(secret, MSG_ID, timestamp, body)


def stripe_headers(secret: str = STRIPE_SECRET, timestamp: int = NOW, body: bytes = BODY) -> dict[str, str]:
    return sign_stripe(secret, timestamp, body)


def stripe_hex(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def standard_b64(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


# --- Valid deliveries -------------------------------------------------------


def test_standard_valid_signature_passes() -> None:
    """A delivery signed with the configured secret is valid."""
    result = StandardWebhooksVerifier(STANDARD_SECRET).verify(standard_headers(), BODY, now=NOW)

    assert result.valid
    assert result.reason == "ok"


def test_stripe_valid_signature_passes() -> None:
    """A Stripe delivery signed with the configured secret is valid."""
    result = StripeSignatureVerifier(STRIPE_SECRET).verify(stripe_headers(), BODY, now=NOW)

    assert result.valid
    assert result.reason == "ok"


def test_standard_known_answer_vector() -> None:
    """The signature over id.timestamp.body, computed here with hmac and base64, is accepted."""
    key = bytes(range(32))
    secret = "whsec_" + base64.b64encode(key).decode("ascii")
    body = b'{"event":"known-answer"}'
    headers = {
        "webhook-id": "msg_known_answer",
        "webhook-timestamp": "1650000000",
        "webhook-signature": "v1," + standard_b64(key, "msg_known_answer", 1650000000, body),
    }

    result = StandardWebhooksVerifier(secret).verify(headers, body, now=1650000000)

    assert result.reason == "ok"
    assert sign_standard_webhook(secret, "msg_known_answer", 1650000000, body) == headers


def test_standard_raw_bytes_secret() -> None:
    """The decoded key given as bytes verifies the same signature as its whsec_ form."""
    result = StandardWebhooksVerifier(STANDARD_KEY).verify(standard_headers(), BODY, now=NOW)

    assert result.reason == "ok"


def test_standard_unpadded_secret() -> None:
    """A whsec_ secret whose base64 padding was dropped still decodes to the same key."""
    key = b"31-byte key needs base64 padding"[:31]
    padded = base64.b64encode(key).decode("ascii")
    unpadded = "whsec_" + padded.rstrip("=")
    headers = sign_standard_webhook("whsec_" + padded, MSG_ID, NOW, BODY)

    assert padded.endswith("=")
    assert StandardWebhooksVerifier(unpadded).verify(headers, BODY, now=NOW).reason == "ok"


def test_stripe_known_answer_vector() -> None:
    """The hex HMAC of t.body keyed with the secret's UTF-8 bytes, computed here, is accepted."""
    secret = "whsec_known_answer_secret"
    body = b'{"id":"evt_known_answer","object":"event"}'
    header = f"t=1650000000,v1={stripe_hex(secret, 1650000000, body)}"

    result = StripeSignatureVerifier(secret).verify({"Stripe-Signature": header}, body, now=1650000000)

    assert result.reason == "ok"
    assert sign_stripe(secret, 1650000000, body) == {"Stripe-Signature": header}


def test_default_clock_accepts_current_timestamp() -> None:
    """Without now=, the system clock is used and a fresh delivery passes."""
    current = int(time.time())

    standard = StandardWebhooksVerifier(STANDARD_SECRET).verify(standard_headers(timestamp=current), BODY)
    stripe = StripeSignatureVerifier(STRIPE_SECRET).verify(stripe_headers(timestamp=current), BODY)

    assert standard.reason == "ok"
    assert stripe.reason == "ok"


def test_empty_body_is_signed() -> None:
    """An empty body is a valid payload for both schemes."""
    standard = StandardWebhooksVerifier(STANDARD_SECRET).verify(standard_headers(body=b""), b"", now=NOW)
    stripe = StripeSignatureVerifier(STRIPE_SECRET).verify(stripe_headers(body=b""), b"", now=NOW)

    assert standard.reason == "ok"
    assert stripe.reason == "ok"


# --- Signature mismatches ---------------------------------------------------


def test_standard_tampered_body_fails() -> None:
    """A body changed after signing gives no_matching_signature."""
    tampered = BODY.replace(b"1250", b"9250")

    result = StandardWebhooksVerifier(STANDARD_SECRET).verify(standard_headers(), tampered, now=NOW)

    assert not result.valid
    assert result.reason == "no_matching_signature"


def test_stripe_tampered_body_fails() -> None:
    """A Stripe body changed after signing gives no_matching_signature."""
    tampered = BODY.replace(b"1250", b"9250")

    result = StripeSignatureVerifier(STRIPE_SECRET).verify(stripe_headers(), tampered, now=NOW)

    assert not result.valid
    assert result.reason == "no_matching_signature"


def test_standard_tampered_id_fails() -> None:
    """The webhook-id is part of the signed content, so changing it fails."""
    headers = standard_headers()
    headers["webhook-id"] = "msg_replayed_under_new_id"

    result = StandardWebhooksVerifier(STANDARD_SECRET).verify(headers, BODY, now=NOW)

    assert result.reason == "no_matching_signature"


def test_standard_tampered_timestamp_fails() -> None:
    """The timestamp is part of the signed content, so changing it within tolerance fails."""
    headers = standard_headers()
    headers["webhook-timestamp"] = str(NOW + 1)

    result = StandardWebhooksVerifier(STANDARD_SECRET).verify(headers, BODY, now=NOW)

    assert result.reason == "no_matching_signature"


def test_stripe_tampered_timestamp_fails() -> None:
    """The t= value is part of the signed payload, so changing it within tolerance fails."""
    header = stripe_headers()["Stripe-Signature"].replace(f"t={NOW}", f"t={NOW + 1}")

    result = StripeSignatureVerifier(STRIPE_SECRET).verify({"Stripe-Signature": header}, BODY, now=NOW)

    assert result.reason == "no_matching_signature"


def test_standard_wrong_secret_fails() -> None:
    """A delivery signed with another secret gives no_matching_signature."""
    result = StandardWebhooksVerifier(STANDARD_SECRET).verify(
        standard_headers(secret=OTHER_STANDARD_SECRET), BODY, now=NOW
    )

    assert not result.valid
    assert result.reason == "no_matching_signature"


def test_stripe_wrong_secret_fails() -> None:
    """A Stripe delivery signed with another secret gives no_matching_signature."""
    result = StripeSignatureVerifier(STRIPE_SECRET).verify(stripe_headers(secret=OTHER_STRIPE_SECRET), BODY, now=NOW)

    assert not result.valid
    assert result.reason == "no_matching_signature"


def test_stripe_secret_prefix_part_of_key() -> None:
    """The Stripe key is the whole secret string, whsec_ prefix included."""
    stripped_key = STRIPE_SECRET.removeprefix("whsec_")
    header = f"t={NOW},v1={stripe_hex(stripped_key, NOW, BODY)}"

    result = StripeSignatureVerifier(STRIPE_SECRET).verify({"Stripe-Signature": header}, BODY, now=NOW)

    assert result.reason == "no_matching_signature"


# --- Key rotation -----------------------------------------------------------


def test_standard_second_signature_matches() -> None:
    """During key rotation the second v1 entry may be the one that matches."""
    old = standard_headers(secret=OTHER_STANDARD_SECRET)["webhook-signature"]
    new = standard_headers()["webhook-signature"]
    headers = standard_headers()
    headers["webhook-signature"] = f"{old} {new}"

    result = StandardWebhooksVerifier(STANDARD_SECRET).verify(headers, BODY, now=NOW)

    assert result.reason == "ok"


def test_standard_other_versions_skipped() -> None:
    """Entries of other versions, such as v1a, are skipped rather than rejected."""
    headers = standard_headers()
    headers["webhook-signature"] = "v1a,c2lnbmF0dXJlIG9mIGFub3RoZXIga2luZA== " + headers["webhook-signature"]

    result = StandardWebhooksVerifier(STANDARD_SECRET).verify(headers, BODY, now=NOW)

    assert result.reason == "ok"


def test_stripe_second_signature_matches() -> None:
    """During key rotation the second v1 element may be the one that matches."""
    old = stripe_hex(OTHER_STRIPE_SECRET, NOW, BODY)
    new = stripe_hex(STRIPE_SECRET, NOW, BODY)
    header = f"t={NOW},v1={old},v1={new},v0={'0' * 64}"

    result = StripeSignatureVerifier(STRIPE_SECRET).verify({"Stripe-Signature": header}, BODY, now=NOW)

    assert result.reason == "ok"


# --- Missing and malformed headers ------------------------------------------


@pytest.mark.parametrize("name", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_standard_missing_header(name: str) -> None:
    """Each of the three headers is required."""
    headers = standard_headers()
    del headers[name]

    result = StandardWebhooksVerifier(STANDARD_SECRET).verify(headers, BODY, now=NOW)

    assert not result.valid
    assert result.reason == "missing_headers"
    assert name in result.detail


@pytest.mark.parametrize("name", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_standard_blank_header(name: str) -> None:
    """A header that is present but blank counts as missing."""
    headers = standard_headers()
    headers[name] = "  "

    result = StandardWebhooksVerifier(STANDARD_SECRET).verify(headers, BODY, now=NOW)

    assert result.reason == "missing_headers"


@pytest.mark.parametrize("value", [None, "", "   "])
def test_stripe_missing_header(value: str | None) -> None:
    """An absent or blank Stripe-Signature header gives missing_headers."""
    headers = {"Content-Type": "application/json"}
    if value is not None:
        headers["Stripe-Signature"] = value

    result = StripeSignatureVerifier(STRIPE_SECRET).verify(headers, BODY, now=NOW)

    assert not result.valid
    assert result.reason == "missing_headers"


@pytest.mark.parametrize(
    "header",
    [
        pytest.param("v1={sig}", id="no-t"),
        pytest.param("t={now}", id="no-v1"),
        pytest.param("t={now},v0={sig}", id="only-v0"),
        pytest.param("t={now},t={now},v1={sig}", id="two-t"),
        pytest.param("t={now},garbage,v1={sig}", id="element-without-equals"),
        pytest.param("t={now},v1={sig},", id="trailing-comma"),
        pytest.param("t={now},v1=not-hex", id="v1-not-hex"),
        pytest.param("t={now},v1={sig}00", id="v1-too-long"),
    ],
)
def test_stripe_malformed_header(header: str) -> None:
    """A present header without exactly one t= and at least one valid v1 is malformed."""
    value = header.format(now=NOW, sig=stripe_hex(STRIPE_SECRET, NOW, BODY))

    result = StripeSignatureVerifier(STRIPE_SECRET).verify({"Stripe-Signature": value}, BODY, now=NOW)

    assert not result.valid
    assert result.reason == "malformed_signature_header"


@pytest.mark.parametrize(
    "signature",
    [
        pytest.param("{sig}", id="no-version"),
        pytest.param(",{sig}", id="empty-version"),
        pytest.param("v1a,{sig}", id="only-v1a"),
        pytest.param("v1,not*base64", id="v1-not-base64"),
    ],
)
def test_standard_malformed_signature(signature: str) -> None:
    """Entries not of the form version,base64, or no v1 entry at all, are malformed."""
    headers = standard_headers()
    valid_b64 = headers["webhook-signature"].removeprefix("v1,")
    headers["webhook-signature"] = signature.format(sig=valid_b64)

    result = StandardWebhooksVerifier(STANDARD_SECRET).verify(headers, BODY, now=NOW)

    assert not result.valid
    assert result.reason == "malformed_signature_header"


def test_header_names_case_insensitive() -> None:
    """Header names match in any letter case."""
    standard = {name.upper(): value for name, value in standard_headers().items()}
    stripe_lower = {"stripe-signature": stripe_headers()["Stripe-Signature"]}
    stripe_upper = {"STRIPE-SIGNATURE": stripe_headers()["Stripe-Signature"]}
    mixed = {key.title(): value for key, value in standard_headers().items()}

    assert StandardWebhooksVerifier(STANDARD_SECRET).verify(standard, BODY, now=NOW).reason == "ok"
    assert StandardWebhooksVerifier(STANDARD_SECRET).verify(mixed, BODY, now=NOW).reason == "ok"
    assert StripeSignatureVerifier(STRIPE_SECRET).verify(stripe_lower, BODY, now=NOW).reason == "ok"
    assert StripeSignatureVerifier(STRIPE_SECRET).verify(stripe_upper, BODY, now=NOW).reason == "ok"


# --- Timestamps -------------------------------------------------------------


@pytest.mark.parametrize("offset", [-301, 301, -86_400, 86_400])
def test_standard_timestamp_out_of_tolerance(offset: int) -> None:
    """A correctly signed delivery too old or too far in the future is rejected."""
    headers = standard_headers(timestamp=NOW + offset)

    result = StandardWebhooksVerifier(STANDARD_SECRET).verify(headers, BODY, now=NOW)

    assert not result.valid
    assert result.reason == "timestamp_out_of_tolerance"


@pytest.mark.parametrize("offset", [-301, 301, -86_400, 86_400])
def test_stripe_timestamp_out_of_tolerance(offset: int) -> None:
    """A correctly signed Stripe delivery too old or too far in the future is rejected."""
    headers = stripe_headers(timestamp=NOW + offset)

    result = StripeSignatureVerifier(STRIPE_SECRET).verify(headers, BODY, now=NOW)

    assert not result.valid
    assert result.reason == "timestamp_out_of_tolerance"


@pytest.mark.parametrize("offset", [-300, 300])
def test_timestamp_at_tolerance_passes(offset: int) -> None:
    """A timestamp exactly tolerance_seconds away is still accepted."""
    standard = StandardWebhooksVerifier(STANDARD_SECRET).verify(standard_headers(timestamp=NOW + offset), BODY, now=NOW)
    stripe = StripeSignatureVerifier(STRIPE_SECRET).verify(stripe_headers(timestamp=NOW + offset), BODY, now=NOW)

    assert standard.reason == "ok"
    assert stripe.reason == "ok"


def test_custom_tolerance_applies() -> None:
    """tolerance_seconds replaces the 300-second default."""
    headers = standard_headers(timestamp=NOW - 30)

    strict = StandardWebhooksVerifier(STANDARD_SECRET, tolerance_seconds=10).verify(headers, BODY, now=NOW)
    loose = StandardWebhooksVerifier(STANDARD_SECRET, tolerance_seconds=60).verify(headers, BODY, now=NOW)

    assert strict.reason == "timestamp_out_of_tolerance"
    assert loose.reason == "ok"


@pytest.mark.parametrize("value", ["soon", "1700000000.5", "-1700000000", "1e9", "１７００", "9" * 16])
def test_standard_invalid_timestamp(value: str) -> None:
    """Anything but a plain decimal integer of Unix seconds gives invalid_timestamp."""
    headers = standard_headers()
    headers["webhook-timestamp"] = value

    result = StandardWebhooksVerifier(STANDARD_SECRET).verify(headers, BODY, now=NOW)

    assert not result.valid
    assert result.reason == "invalid_timestamp"


@pytest.mark.parametrize("value", ["soon", "", "1700000000.5", "-1700000000"])
def test_stripe_invalid_timestamp(value: str) -> None:
    """A non-numeric t= value gives invalid_timestamp."""
    header = f"t={value},v1={stripe_hex(STRIPE_SECRET, NOW, BODY)}"

    result = StripeSignatureVerifier(STRIPE_SECRET).verify({"Stripe-Signature": header}, BODY, now=NOW)

    assert not result.valid
    assert result.reason == "invalid_timestamp"


# --- Body size --------------------------------------------------------------


class _NoHmac:
    """Stand-in for the hmac module that fails if a digest is computed."""

    compare_digest = staticmethod(hmac.compare_digest)

    @staticmethod
    def new(*args: object, **kwargs: object) -> None:
        raise AssertionError("an HMAC was computed for an oversized body")


def test_standard_oversized_body_skips_hmac(monkeypatch: pytest.MonkeyPatch) -> None:
    """A correctly signed body over the limit gives payload_too_large before any HMAC."""
    body = b"x" * 101
    headers = standard_headers(body=body)
    monkeypatch.setattr(_verifiers, "hmac", _NoHmac)

    result = StandardWebhooksVerifier(STANDARD_SECRET, max_body_bytes=100).verify(headers, body, now=NOW)

    assert not result.valid
    assert result.reason == "payload_too_large"


def test_stripe_oversized_body_skips_hmac(monkeypatch: pytest.MonkeyPatch) -> None:
    """A correctly signed Stripe body over the limit gives payload_too_large before any HMAC."""
    body = b"x" * 101
    headers = stripe_headers(body=body)
    monkeypatch.setattr(_verifiers, "hmac", _NoHmac)

    result = StripeSignatureVerifier(STRIPE_SECRET, max_body_bytes=100).verify(headers, body, now=NOW)

    assert not result.valid
    assert result.reason == "payload_too_large"


def test_oversized_body_checked_before_headers() -> None:
    """The size check comes first, so an oversized body without headers is still payload_too_large."""
    body = b"x" * 101

    standard = StandardWebhooksVerifier(STANDARD_SECRET, max_body_bytes=100).verify({}, body, now=NOW)
    stripe = StripeSignatureVerifier(STRIPE_SECRET, max_body_bytes=100).verify({}, body, now=NOW)

    assert standard.reason == "payload_too_large"
    assert stripe.reason == "payload_too_large"


def test_body_at_limit_passes() -> None:
    """A body of exactly max_body_bytes is verified normally."""
    body = b"x" * 100

    standard = StandardWebhooksVerifier(STANDARD_SECRET, max_body_bytes=100).verify(
        standard_headers(body=body), body, now=NOW
    )
    stripe = StripeSignatureVerifier(STRIPE_SECRET, max_body_bytes=100).verify(stripe_headers(body=body), body, now=NOW)

    assert standard.reason == "ok"
    assert stripe.reason == "ok"


# --- Secrets stay out of output ---------------------------------------------


def test_repr_hides_secret() -> None:
    """repr shows the limits but neither form of the secret."""
    standard = repr(StandardWebhooksVerifier(STANDARD_SECRET))
    stripe = repr(StripeSignatureVerifier(STRIPE_SECRET))

    assert STANDARD_SECRET not in standard
    assert STANDARD_SECRET.removeprefix("whsec_") not in standard
    assert str(STANDARD_KEY) not in standard
    assert STRIPE_SECRET not in stripe
    assert "tolerance_seconds=300" in standard
    assert "max_body_bytes=1048576" in stripe


def test_verifier_has_no_instance_dict() -> None:
    """Without __dict__, vars() and generic object dumps cannot expose the key."""
    verifier = StandardWebhooksVerifier(STANDARD_SECRET)

    assert not hasattr(verifier, "__dict__")


@pytest.mark.parametrize(
    ("factory", "kwargs", "parameter", "secret"),
    [
        pytest.param(StandardWebhooksVerifier, {"secret": ""}, "secret", "", id="standard-empty"),
        pytest.param(StandardWebhooksVerifier, {"secret": b""}, "secret", "", id="standard-empty-bytes"),
        pytest.param(StandardWebhooksVerifier, {"secret": "whsec_"}, "secret", "whsec_", id="standard-empty-key"),
        pytest.param(
            StandardWebhooksVerifier,
            {"secret": "whsec_s3cr3t!not*base64"},
            "secret",
            "s3cr3t!not*base64",
            id="standard-bad-base64",
        ),
        pytest.param(
            StandardWebhooksVerifier,
            {"secret": "plainS3cretValue"},
            "secret",
            "plainS3cretValue",
            id="standard-no-prefix",
        ),
        pytest.param(StripeSignatureVerifier, {"secret": ""}, "secret", "", id="stripe-empty"),
        pytest.param(
            StandardWebhooksVerifier,
            {"secret": STANDARD_SECRET, "tolerance_seconds": 0},
            "tolerance_seconds",
            STANDARD_SECRET,
            id="tolerance-zero",
        ),
        pytest.param(
            StripeSignatureVerifier,
            {"secret": STRIPE_SECRET, "tolerance_seconds": -5},
            "tolerance_seconds",
            STRIPE_SECRET,
            id="tolerance-negative",
        ),
        pytest.param(
            StripeSignatureVerifier,
            {"secret": STRIPE_SECRET, "tolerance_seconds": float("nan")},
            "tolerance_seconds",
            STRIPE_SECRET,
            id="tolerance-nan",
        ),
        pytest.param(
            StandardWebhooksVerifier,
            {"secret": STANDARD_SECRET, "tolerance_seconds": float("inf")},
            "tolerance_seconds",
            STANDARD_SECRET,
            id="tolerance-infinite",
        ),
        pytest.param(
            StandardWebhooksVerifier,
            {"secret": STANDARD_SECRET, "max_body_bytes": 0},
            "max_body_bytes",
            STANDARD_SECRET,
            id="max-body-zero",
        ),
    ],
)
def test_bad_argument_message(factory: type, kwargs: dict[str, object], parameter: str, secret: str) -> None:
    """A bad argument raises ValueError naming the parameter but not the secret."""
    with pytest.raises(ValueError) as caught:
        factory(**kwargs)

    message = str(caught.value)
    assert message.startswith(parameter)
    if secret and secret != "whsec_":
        assert secret not in message
    assert caught.value.__context__ is None or caught.value.__suppress_context__


def test_bad_base64_message_names_form() -> None:
    """The invalid-base64 message names the accepted form."""
    with pytest.raises(ValueError, match="whsec_") as caught:
        StandardWebhooksVerifier("whsec_s3cr3t!not*base64")

    assert "base64" in str(caught.value)


def test_wrong_secret_type_raises() -> None:
    """A secret that is neither str nor bytes raises TypeError."""
    with pytest.raises(TypeError, match="secret"):
        StandardWebhooksVerifier(12345)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="secret"):
        StripeSignatureVerifier(None)  # type: ignore[arg-type]


def _failing_deliveries() -> list[tuple[WebhookVerifier, dict[str, str], bytes]]:
    standard = StandardWebhooksVerifier(STANDARD_SECRET, max_body_bytes=len(BODY))
    stripe = StripeSignatureVerifier(STRIPE_SECRET, max_body_bytes=len(BODY))
    tampered = BODY.replace(b"1250", b"9250")
    good_standard = standard_headers()
    good_stripe = stripe_headers()
    return [
        (standard, good_standard, tampered),
        (standard, standard_headers(secret=OTHER_STANDARD_SECRET), BODY),
        (standard, standard_headers(timestamp=NOW - 999), BODY),
        (standard, {**good_standard, "webhook-timestamp": "later"}, BODY),
        (standard, {**good_standard, "webhook-signature": good_standard["webhook-signature"][3:]}, BODY),
        (standard, {"webhook-signature": good_standard["webhook-signature"]}, BODY),
        (standard, good_standard, BODY + b" "),
        (stripe, good_stripe, tampered),
        (stripe, stripe_headers(secret=OTHER_STRIPE_SECRET), BODY),
        (stripe, stripe_headers(timestamp=NOW + 999), BODY),
        (stripe, {"Stripe-Signature": good_stripe["Stripe-Signature"].replace(f"t={NOW},", "")}, BODY),
        (stripe, {"Stripe-Signature": good_stripe["Stripe-Signature"].replace(f"t={NOW}", "t=later")}, BODY),
        (stripe, {}, BODY),
        (stripe, good_stripe, BODY + b" "),
    ]


def test_details_hide_secrets_and_signatures() -> None:
    """No rejection detail contains a secret, a sent signature or the expected signature."""
    forbidden = [
        STANDARD_SECRET,
        STANDARD_SECRET.removeprefix("whsec_"),
        STRIPE_SECRET,
        standard_headers()["webhook-signature"].removeprefix("v1,"),
        standard_headers(secret=OTHER_STANDARD_SECRET)["webhook-signature"].removeprefix("v1,"),
        stripe_hex(STRIPE_SECRET, NOW, BODY),
        stripe_hex(OTHER_STRIPE_SECRET, NOW, BODY),
        stripe_hex(STRIPE_SECRET, NOW, BODY.replace(b"1250", b"9250")),
    ]

    for verifier, headers, body in _failing_deliveries():
        result = verifier.verify(headers, body, now=NOW)
        assert not result.valid, result
        assert result.reason in REASONS
        assert result.reason != "ok"
        for value in forbidden:
            assert value not in result.detail, result.reason
            assert value not in result.reason


def test_every_reason_code_reachable() -> None:
    """The failing deliveries above cover every rejection code."""
    reasons = {verifier.verify(headers, body, now=NOW).reason for verifier, headers, body in _failing_deliveries()}

    assert reasons == REASONS - {"ok"}


# --- Result type ------------------------------------------------------------


def test_reason_codes_fixed() -> None:
    """The reason codes are exactly the strings stored in the audit table."""
    assert REASONS == {
        "ok",
        "missing_headers",
        "timestamp_out_of_tolerance",
        "invalid_timestamp",
        "no_matching_signature",
        "malformed_signature_header",
        "payload_too_large",
    }
    assert all(type(reason) is str for reason in REASONS)


def test_result_frozen() -> None:
    """A VerificationResult cannot be changed after it is returned."""
    result = StandardWebhooksVerifier(STANDARD_SECRET).verify(standard_headers(), BODY, now=NOW)

    with pytest.raises(dataclasses.FrozenInstanceError):
        result.valid = False  # type: ignore[misc]
    assert isinstance(result, VerificationResult)


def test_verifiers_implement_interface() -> None:
    """Both built-in verifiers are WebhookVerifier instances."""
    assert isinstance(StandardWebhooksVerifier(STANDARD_SECRET), WebhookVerifier)
    assert isinstance(StripeSignatureVerifier(STRIPE_SECRET), WebhookVerifier)
