"""Signature verifiers for inbound webhooks.

A receiver calls a verifier with the headers and the raw body of a delivery
before it parses or processes anything. The returned `VerificationResult` is
stored with the delivery in the audit table (`signature_valid` and
`signature_reason` in `webhook_logs`), so every rejection has a fixed reason
code for queries and one sentence for the person reading the row. Two schemes
are built in: Standard Webhooks 1.0 symmetric signatures and the
Stripe-Signature header. The signing helpers produce valid headers for tests
and examples.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

__all__ = [
    "REASONS",
    "REASON_INVALID_TIMESTAMP",
    "REASON_MALFORMED_SIGNATURE_HEADER",
    "REASON_MISSING_HEADERS",
    "REASON_NO_MATCHING_SIGNATURE",
    "REASON_OK",
    "REASON_PAYLOAD_TOO_LARGE",
    "REASON_TIMESTAMP_OUT_OF_TOLERANCE",
    "StandardWebhooksVerifier",
    "StripeSignatureVerifier",
    "VerificationResult",
    "WebhookVerifier",
    "sign_standard_webhook",
    "sign_stripe",
]

# Plain strings, not an Enum, because they are written as-is to a text column
# and database drivers may adapt Enum members by name.
REASON_OK: Final = "ok"
REASON_MISSING_HEADERS: Final = "missing_headers"
REASON_TIMESTAMP_OUT_OF_TOLERANCE: Final = "timestamp_out_of_tolerance"
REASON_INVALID_TIMESTAMP: Final = "invalid_timestamp"
REASON_NO_MATCHING_SIGNATURE: Final = "no_matching_signature"
REASON_MALFORMED_SIGNATURE_HEADER: Final = "malformed_signature_header"
REASON_PAYLOAD_TOO_LARGE: Final = "payload_too_large"

REASONS: Final = frozenset(
    {
        REASON_OK,
        REASON_MISSING_HEADERS,
        REASON_TIMESTAMP_OUT_OF_TOLERANCE,
        REASON_INVALID_TIMESTAMP,
        REASON_NO_MATCHING_SIGNATURE,
        REASON_MALFORMED_SIGNATURE_HEADER,
        REASON_PAYLOAD_TOO_LARGE,
    }
)

_DEFAULT_TOLERANCE_SECONDS: Final = 300
_DEFAULT_MAX_BODY_BYTES: Final = 1_048_576

_STANDARD_ID_HEADER: Final = "webhook-id"
_STANDARD_TIMESTAMP_HEADER: Final = "webhook-timestamp"
_STANDARD_SIGNATURE_HEADER: Final = "webhook-signature"
_STANDARD_SECRET_PREFIX: Final = "whsec_"
_STRIPE_SIGNATURE_HEADER: Final = "stripe-signature"

# Both schemes call their HMAC-SHA256 signatures "v1". Other versions, such as
# Standard Webhooks' asymmetric "v1a" or Stripe's "v0", are skipped.
_SIGNATURE_SCHEME: Final = "v1"
_SHA256_HEX_LENGTH: Final = 64

# Fifteen decimal digits convert to float exactly, and no Unix time in seconds
# needs more until the year 31 million.
_MAX_TIMESTAMP_DIGITS: Final = 15


@dataclass(frozen=True, slots=True)
class VerificationResult:
    """Outcome of one verification: a flag, a reason code from `REASONS` and one sentence."""

    valid: bool
    reason: str
    detail: str


class WebhookVerifier(ABC):
    """Interface of a webhook signature verifier, one instance per provider and secret."""

    __slots__ = ()

    @abstractmethod
    def verify(self, headers: Mapping[str, str], body: bytes, *, now: float | None = None) -> VerificationResult:
        """Check the signature of one delivery.

        *headers* may use any letter case in their names. *body* must be the raw
        bytes as received, because re-encoded JSON no longer matches the
        signature. *now* is the current Unix time in seconds and defaults to
        the system clock.
        """


class _MalformedHeader(Exception):
    """Raised by a header parser, with a detail sentence that contains no header value."""


class _HmacVerifier(WebhookVerifier):
    """Shared limits, checks and repr of the HMAC-SHA256 verifiers."""

    __slots__ = ("_key", "_tolerance_seconds", "_max_body_bytes")

    def __init__(self, key: bytes, tolerance_seconds: float, max_body_bytes: int) -> None:
        _validate_tolerance(tolerance_seconds)
        _validate_max_body_bytes(max_body_bytes)
        self._key = key
        self._tolerance_seconds = tolerance_seconds
        self._max_body_bytes = max_body_bytes

    @property
    def tolerance_seconds(self) -> float:
        """Maximum distance, in seconds, between a delivery's timestamp and now, in either direction."""
        return self._tolerance_seconds

    @property
    def max_body_bytes(self) -> int:
        """Largest body, in bytes, that is verified. Larger bodies are rejected before any HMAC."""
        return self._max_body_bytes

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(secret='***', tolerance_seconds={self._tolerance_seconds!r}, "
            f"max_body_bytes={self._max_body_bytes!r})"
        )

    def _check_body_size(self, body: bytes) -> VerificationResult | None:
        if len(body) <= self._max_body_bytes:
            return None
        return _reject(
            REASON_PAYLOAD_TOO_LARGE,
            f"The body is {len(body)} bytes, which is over the limit of {self._max_body_bytes} bytes.",
        )

    def _check_timestamp(self, text: str, label: str, now: float | None) -> int | VerificationResult:
        """Parse *text* as Unix seconds, or return the rejection if it is invalid or out of tolerance.

        *label* names where the text came from, such as "webhook-timestamp header".
        """
        if not (text.isascii() and text.isdigit()) or len(text) > _MAX_TIMESTAMP_DIGITS:
            return _reject(
                REASON_INVALID_TIMESTAMP,
                f"The {label} is not an integer Unix time in seconds.",
            )

        timestamp = int(text)
        current = time.time() if now is None else now
        skew = current - timestamp
        if abs(skew) <= self._tolerance_seconds:
            return timestamp

        direction = "in the past" if skew > 0 else "in the future"
        return _reject(
            REASON_TIMESTAMP_OUT_OF_TOLERANCE,
            f"The {label} is {abs(skew):.0f} seconds {direction}, "
            f"outside the tolerance of {self._tolerance_seconds} seconds.",
        )


class StandardWebhooksVerifier(_HmacVerifier):
    """Verifier for Standard Webhooks 1.0 symmetric (HMAC-SHA256) signatures.

    The signature covers `{webhook-id}.{webhook-timestamp}.{body}`, and the
    webhook-signature header lists space-separated `v1,<base64>` entries, any
    of which may match so that a sender can rotate its secret without downtime.
    *secret* is either the `whsec_<base64>` string as providers display it or
    the decoded key as bytes.
    """

    __slots__ = ()

    def __init__(
        self,
        secret: str | bytes,
        *,
        tolerance_seconds: float = _DEFAULT_TOLERANCE_SECONDS,
        max_body_bytes: int = _DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        super().__init__(_decode_standard_secret(secret), tolerance_seconds, max_body_bytes)

    def verify(self, headers: Mapping[str, str], body: bytes, *, now: float | None = None) -> VerificationResult:
        """Check the webhook-id, webhook-timestamp and webhook-signature headers against *body*."""
        too_large = self._check_body_size(body)
        if too_large is not None:
            return too_large

        lowered = _lowercase_keys(headers)
        required = (_STANDARD_ID_HEADER, _STANDARD_TIMESTAMP_HEADER, _STANDARD_SIGNATURE_HEADER)
        missing = [name for name in required if not lowered.get(name, "").strip()]
        if missing:
            return _reject(REASON_MISSING_HEADERS, f"Required headers are missing or empty: {', '.join(missing)}.")

        timestamp = self._check_timestamp(lowered[_STANDARD_TIMESTAMP_HEADER], "webhook-timestamp header", now)
        if isinstance(timestamp, VerificationResult):
            return timestamp

        try:
            candidates = _parse_standard_signatures(lowered[_STANDARD_SIGNATURE_HEADER])
        except _MalformedHeader as error:
            return _reject(REASON_MALFORMED_SIGNATURE_HEADER, str(error))

        expected = _standard_signature(self._key, lowered[_STANDARD_ID_HEADER], timestamp, body)
        if any(hmac.compare_digest(expected, candidate) for candidate in candidates):
            return _accept()
        return _reject(
            REASON_NO_MATCHING_SIGNATURE,
            f"None of the {len(candidates)} v1 signatures matches the body signed with the configured secret.",
        )


class StripeSignatureVerifier(_HmacVerifier):
    """Verifier for the Stripe-Signature header.

    The header is `t=<unix seconds>,v1=<hex>[,v1=<hex>...]`, and each v1 value is
    the hex HMAC-SHA256 of `{t}.{body}` keyed with the UTF-8 bytes of the
    endpoint secret as shown, `whsec_` prefix included. Any v1 value may match.
    Stripe's Python library rejects only timestamps that are too old. This
    class also rejects timestamps too far in the future, like the Standard
    Webhooks verifier.
    """

    __slots__ = ()

    def __init__(
        self,
        secret: str | bytes,
        *,
        tolerance_seconds: float = _DEFAULT_TOLERANCE_SECONDS,
        max_body_bytes: int = _DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        super().__init__(_encode_stripe_secret(secret), tolerance_seconds, max_body_bytes)

    def verify(self, headers: Mapping[str, str], body: bytes, *, now: float | None = None) -> VerificationResult:
        """Check the Stripe-Signature header against *body*.

        A missing or blank header gives `missing_headers`. A header that is
        present but has no `t=` element, more than one, no v1 element, or an
        element that is not `key=value` gives `malformed_signature_header`.
        """
        too_large = self._check_body_size(body)
        if too_large is not None:
            return too_large

        header = _lowercase_keys(headers).get(_STRIPE_SIGNATURE_HEADER, "")
        if not header.strip():
            return _reject(REASON_MISSING_HEADERS, "The Stripe-Signature header is missing or empty.")

        try:
            timestamp_text, candidates = _parse_stripe_header(header)
        except _MalformedHeader as error:
            return _reject(REASON_MALFORMED_SIGNATURE_HEADER, str(error))

        timestamp = self._check_timestamp(timestamp_text, "Stripe-Signature t= value", now)
        if isinstance(timestamp, VerificationResult):
            return timestamp

        expected = _stripe_signature(self._key, timestamp, body)
        if any(hmac.compare_digest(expected, candidate) for candidate in candidates):
            return _accept()
        return _reject(
            REASON_NO_MATCHING_SIGNATURE,
            f"None of the {len(candidates)} v1 signatures matches the body signed with the configured secret.",
        )


def sign_standard_webhook(secret: str | bytes, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """Build the three Standard Webhooks headers for *body*, signed with *secret*."""
    key = _decode_standard_secret(secret)
    signature = base64.b64encode(_standard_signature(key, msg_id, timestamp, body)).decode("ascii")
    return {
        _STANDARD_ID_HEADER: msg_id,
        _STANDARD_TIMESTAMP_HEADER: f"{timestamp:d}",
        _STANDARD_SIGNATURE_HEADER: f"{_SIGNATURE_SCHEME},{signature}",
    }


def sign_stripe(secret: str | bytes, timestamp: int, body: bytes) -> dict[str, str]:
    """Build a Stripe-Signature header for *body* with one v1 signature made with *secret*."""
    key = _encode_stripe_secret(secret)
    signature = _stripe_signature(key, timestamp, body).hex()
    return {"Stripe-Signature": f"t={timestamp:d},{_SIGNATURE_SCHEME}={signature}"}


def _accept() -> VerificationResult:
    detail = "The signature matches and the timestamp is within tolerance."
    return VerificationResult(valid=True, reason=REASON_OK, detail=detail)


def _reject(reason: str, detail: str) -> VerificationResult:
    return VerificationResult(valid=False, reason=reason, detail=detail)


def _lowercase_keys(headers: Mapping[str, str]) -> dict[str, str]:
    # If a name appears twice, in any letter case, the later value wins.
    return {name.lower(): value for name, value in headers.items()}


def _validate_tolerance(tolerance_seconds: float) -> None:
    if isinstance(tolerance_seconds, bool) or not isinstance(tolerance_seconds, int | float):
        raise TypeError(
            f"tolerance_seconds must be a number of seconds, not {type(tolerance_seconds).__name__}"
        )
    # NaN would make every comparison false and so accept any timestamp.
    if not math.isfinite(tolerance_seconds) or tolerance_seconds <= 0:
        raise ValueError(
            f"tolerance_seconds must be a positive, finite number of seconds such as 300, got {tolerance_seconds!r}"
        )


def _validate_max_body_bytes(max_body_bytes: int) -> None:
    if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int):
        raise TypeError(f"max_body_bytes must be an int number of bytes, not {type(max_body_bytes).__name__}")
    if max_body_bytes <= 0:
        raise ValueError(f"max_body_bytes must be a positive number of bytes such as 1048576, got {max_body_bytes!r}")


def _decode_standard_secret(secret: str | bytes) -> bytes:
    """Decode a Standard Webhooks secret into its HMAC key. No error message contains the secret."""
    if isinstance(secret, bytes | bytearray):
        key = bytes(secret)
    elif isinstance(secret, str):
        if not secret.startswith(_STANDARD_SECRET_PREFIX):
            raise ValueError(
                "secret must be a string of the form 'whsec_<base64>', as the provider shows it, "
                "or the decoded key as bytes"
            )
        encoded = secret.removeprefix(_STANDARD_SECRET_PREFIX)
        # The Standard Webhooks Python library also accepts unpadded base64, so
        # the padding is restored before the strict decode.
        padded = encoded + "=" * (-len(encoded) % 4)
        try:
            key = base64.b64decode(padded, validate=True)
        except ValueError:
            # `from None` keeps the decoder's message and context out of the traceback.
            raise ValueError(
                "secret has the 'whsec_' prefix but the rest is not valid base64. "
                "Pass the signing secret exactly as the provider shows it"
            ) from None
    else:
        raise TypeError(f"secret must be a 'whsec_<base64>' string or bytes, not {type(secret).__name__}")

    if not key:
        raise ValueError("secret must not be empty. Pass a 'whsec_<base64>' string or the decoded key as bytes")
    return key


def _encode_stripe_secret(secret: str | bytes) -> bytes:
    """Return the HMAC key of a Stripe endpoint secret: its UTF-8 bytes, prefix included."""
    if isinstance(secret, bytes | bytearray):
        key = bytes(secret)
    elif isinstance(secret, str):
        key = secret.encode("utf-8")
    else:
        raise TypeError(
            f"secret must be the endpoint secret as a string such as 'whsec_...', not {type(secret).__name__}"
        )

    if not key:
        raise ValueError("secret must not be empty. Pass the endpoint secret as a string such as 'whsec_...'")
    return key


def _standard_signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> bytes:
    # The signed text uses the parsed integer, not the header's exact spelling,
    # as the Standard Webhooks and Stripe Python libraries do.
    signed_content = f"{msg_id}.{timestamp:d}.".encode() + body
    return hmac.new(key, signed_content, hashlib.sha256).digest()


def _stripe_signature(key: bytes, timestamp: int, body: bytes) -> bytes:
    signed_payload = f"{timestamp:d}.".encode() + body
    return hmac.new(key, signed_payload, hashlib.sha256).digest()


def _parse_standard_signatures(header: str) -> list[bytes]:
    """Return the decoded v1 signatures of a webhook-signature header."""
    signatures: list[bytes] = []
    for entry in header.split():
        version, separator, encoded = entry.partition(",")
        if not separator or not version:
            raise _MalformedHeader(
                "The webhook-signature header has an entry that is not of the form 'version,signature'."
            )
        if version != _SIGNATURE_SCHEME:
            continue
        try:
            signatures.append(base64.b64decode(encoded, validate=True))
        except ValueError:
            raise _MalformedHeader(
                "The webhook-signature header has a v1 signature that is not valid base64."
            ) from None

    if not signatures:
        raise _MalformedHeader("The webhook-signature header contains no v1 signature.")
    return signatures


def _parse_stripe_header(header: str) -> tuple[str, list[bytes]]:
    """Return the t= text and the decoded v1 signatures of a Stripe-Signature header."""
    timestamps: list[str] = []
    signatures: list[bytes] = []
    for element in header.split(","):
        name, separator, value = element.strip().partition("=")
        if not separator or not name:
            raise _MalformedHeader("The Stripe-Signature header has an element that is not of the form 'key=value'.")
        if name == "t":
            timestamps.append(value)
        elif name == _SIGNATURE_SCHEME:
            signatures.append(_decode_hex_digest(value))

    if not timestamps:
        raise _MalformedHeader("The Stripe-Signature header has no t= timestamp.")
    if len(timestamps) > 1:
        raise _MalformedHeader("The Stripe-Signature header has more than one t= timestamp.")
    if not signatures:
        raise _MalformedHeader("The Stripe-Signature header contains no v1 signature.")
    return timestamps[0], signatures


def _decode_hex_digest(value: str) -> bytes:
    # bytes.fromhex alone would accept embedded spaces and any even length.
    is_hex = value.isascii() and all(character in "0123456789abcdefABCDEF" for character in value)
    if len(value) != _SHA256_HEX_LENGTH or not is_hex:
        raise _MalformedHeader("The Stripe-Signature header has a v1 value that is not a 64-digit hex SHA-256 digest.")
    return bytes.fromhex(value)
