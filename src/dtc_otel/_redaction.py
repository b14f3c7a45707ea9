"""One secret detector for every output: log lines, span attributes, audit rows and events.

A value is masked when its key names a secret (``password``, ``api_key``,
``Authorization``, ...) or when the value itself looks like one (bearer
credentials, JWTs, private keys, vendor key formats, card numbers that pass
the Luhn check, URL passwords and signed URL parameters). Key names are
matched on whole words, so ``author`` and ``authority`` stay readable.

Limits: detection is by pattern, so a secret with no recognisable key or
format (a random password in free text) passes; docs/redaction.md lists what
is caught and how to add patterns.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["MASK", "Redactor", "default_redactor", "luhn_valid", "redact", "set_default_redactor"]

MASK = "[REDACTED]"

# Whole words that name a secret on their own.
_SECRET_WORDS = frozenset(
    {
        "password", "passwd", "pwd", "passphrase", "secret", "secrets", "token", "tokens", "apikey",
        "authorization", "auth", "cookie", "cookies", "session", "sessionid", "credential", "credentials",
        "privatekey", "cardnumber", "cvv", "cvc", "ssn", "signature", "sig", "accesstoken",
        "refreshtoken", "idtoken", "clientsecret", "accesskey", "secretkey", "bearer", "jwt",
        "dsn", "connectionstring", "webhooksecret", "iban",
    }
)  # fmt: skip
# Word pairs that name a secret together ("api key", "private key", ...).
_SECRET_PAIRS = frozenset(
    {
        ("api", "key"), ("private", "key"), ("card", "number"), ("access", "key"), ("secret", "key"),
        ("client", "secret"), ("session", "id"), ("access", "token"), ("refresh", "token"), ("signing", "key"),
        ("set", "cookie"), ("connection", "string"), ("account", "number"), ("security", "token"),
    }
)  # fmt: skip
# Keys that contain a secret word but hold no secret.
_DEFAULT_ALLOWED_KEYS = frozenset(
    {"token_count", "tokens_used", "max_tokens", "prompt_tokens", "completion_tokens", "token_type", "session_count"}
)

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_WORD_SPLIT = re.compile(r"[^a-z0-9]+")


def _words(key: str) -> list[str]:
    return [word for word in _WORD_SPLIT.split(_CAMEL.sub("_", key).lower()) if word]


# Each rule: a cheap substring test, then the pattern it guards. Running the
# patterns one by one behind their triggers keeps an ordinary log field at
# about a microsecond; one combined pattern cost 20-30 us per field here.
# A group named "keep" is the prefix that stays readable ("Bearer ").
_RULES: list[tuple[tuple[str, ...], str]] = [
    (("PRIVATE KEY",), r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)"),
    (("earer",), r"(?P<keep>\b[Bb]earer\s+)[A-Za-z0-9\-._~+/]{8,}=*"),
    (("asic ", "asic\t"), r"(?P<keep>\b[Bb]asic\s+)[A-Za-z0-9+/]{8,}={0,2}"),
    (("eyJ",), r"\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}"),
    (("://",), r"(?P<keep>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@]+:)[^\s@/]+(?=@)"),
    (
        ("=",),
        r"(?P<keep>(?:^|(?<=[?&;\s]))(?i:sig|signature|x-amz-signature|x-amz-credential|x-amz-security-token|x-goog-signature"
        r"|x-goog-credential|token|access_token|refresh_token|id_token|api_key|apikey|key|client_secret|password"
        r"|secret|code|auth)=)[^&\s#\"'<>]+",
    ),
    (("_live_", "_test_", "whsec_"), r"\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{10,}|\bwhsec_[A-Za-z0-9+/=]{10,}"),
    (("AKIA", "ASIA", "AGPA", "AIDA", "AROA", "ANPA", "ANVA", "AIPA"), r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}\b"),
    (("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"), r"\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{30,}\b|\bgithub_pat_[A-Za-z0-9_]{22,}\b"),
    (("xox", "hooks.slack.com"), r"\bxox[abposr]-[A-Za-z0-9-]{10,}|https://hooks\.slack\.com/services/[A-Za-z0-9/]+"),
    (("AIza",), r"\bAIza[0-9A-Za-z_-]{35}(?![0-9A-Za-z_-])"),
    (
        ("=", ":"),
        r"(?P<keep>\b(?i:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?token|auth[_-]?token|client[_-]?secret)"
        r"\s*[:=]\s*[\"']?)[^\s\"',;&]{3,}",
    ),
]
# Card numbers have no literal trigger; a run of 13 to 19 digits is the test,
# and only numbers that pass the Luhn check are masked.
_CARD = re.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d-])")
_DIGIT_RUN = re.compile(r"\d[\d -]{11,}\d")
_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")
_PHONE = re.compile(r"(?<![\w+])\+?\d(?:[\s().-]?\d){8,14}(?!\w)")

# Values shorter than this are returned unscanned: no rule matches them.
_MIN_SCAN_LENGTH = 8
# Short values repeat (topics, statuses, paths, entity IDs, a job's ID over its
# events), so their scan results are kept: a hit costs a tenth of the cheapest
# scan. Long values are mostly unique and are scanned every time.
_CACHED_TEXT_LENGTH = 128
_TEXT_CACHE_SIZE = 4096
# UUIDs, trace IDs and hashes (hex digits and dashes, with at least one
# letter) contain no rule trigger, and the card rule passes over digits inside
# them (see _card). So a value that is one such ID skips the scan: for a UUID
# this test took 0.3 us here, the scan 2 us.
_HEX_ID_CHARS = b"0123456789abcdefABCDEF-"
_DIGITS_AND_DASHES = b"0123456789-"
# The word around a card-number match, and the words that are hex IDs.
_WORD_CHAR = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
_HEX_WORD = re.compile(r"[0-9A-Fa-f-]*[A-Fa-f][0-9A-Fa-f-]*")
# The triggers of the rules above as one pattern.
_RULE_TRIGGERS = r"PRIVATE KEY|earer|asic\s|eyJ|[=:@]|_live_|_test_|whsec_|A[KSGIRNP][IPDONV]A|gh[pousr]_|github_pat_|xox|AIza"
# Every trigger, plus digits for card numbers, in one search: most ordinary
# values contain none and skip the rules entirely.
_ANY_TRIGGER = re.compile(_RULE_TRIGGERS + r"|\d{4}")
# Without the digits: IDs such as UUIDs often contain four digits in a row
# but no other trigger, and then only the card number check applies.
_RULE_TRIGGER = re.compile(_RULE_TRIGGERS)


# Values with nothing inside to scan.
_PLAIN_TYPES = frozenset({int, float, bool, type(None)})


def _is_plain_hex_id(text: str) -> bool:
    raw = text.encode("utf-8", "replace")
    # Nothing but hex digits and dashes, and not only digits and dashes, which may be a card number.
    return not raw.translate(None, _HEX_ID_CHARS) and bool(raw.translate(None, _DIGITS_AND_DASHES))


def _keep_prefix(match: re.Match[str]) -> str:
    return (match.groupdict().get("keep") or "") + MASK


def _card(match: re.Match[str]) -> str:
    text, (start, end) = match.string, match.span()
    while start > 0 and text[start - 1] in _WORD_CHAR:
        start -= 1
    while end < len(text) and text[end] in _WORD_CHAR:
        end += 1
    if _HEX_WORD.fullmatch(text, start, end):
        # Digits inside a trace ID, a UUID or a hash: about one such ID in 500 contains
        # a digit run that passes the Luhn check, and masking it would break the ID.
        return match.group(0)

    return MASK if luhn_valid(match.group(0)) else match.group(0)


def _contains(words: list[str], sequence: tuple[str, ...]) -> bool:
    size = len(sequence)
    return any(tuple(words[i : i + size]) == sequence for i in range(len(words) - size + 1))


def luhn_valid(digits: str) -> bool:
    """Return whether *digits* (spaces and dashes allowed) pass the Luhn checksum."""
    numbers = [int(c) for c in digits if c.isdigit()]
    if not 13 <= len(numbers) <= 19:
        return False
    total = 0
    for index, number in enumerate(reversed(numbers)):
        if index % 2 == 1:
            number *= 2
            if number > 9:
                number -= 9
        total += number

    return total % 10 == 0


class Redactor:
    """Mask secrets in keys and values.

    **Parameters:**

    * **extra_keys** - more key words that name secrets, such as ``pin``.
    * **allowed_keys** - keys that look sensitive but are not, such as ``token_count``.
    * **extra_patterns** - more regular expressions whose matches are masked.
    * **emails**, **phones** - also mask e-mail addresses and phone numbers in free text.
    """

    def __init__(
        self,
        *,
        extra_keys: Iterable[str] = (),
        allowed_keys: Iterable[str] = (),
        extra_patterns: Iterable[str] = (),
        emails: bool = False,
        phones: bool = False,
    ) -> None:
        extra = [_words(key) for key in extra_keys]
        self._secret_words = _SECRET_WORDS | {"".join(words) for words in extra if words}
        # Keys of several words ("tax_number") also match inside longer keys
        # ("customer_tax_number", "app.taxNumber").
        self._secret_sequences = [tuple(words) for words in extra if len(words) > 1]
        self._allowed = _DEFAULT_ALLOWED_KEYS | {key.lower() for key in allowed_keys}
        self._rules = [(triggers, re.compile(pattern)) for triggers, pattern in _RULES]
        self._extra = []
        for pattern in extra_patterns:
            try:
                self._extra.append(re.compile(pattern))
            except re.error as exc:
                raise ValueError(f"invalid redaction pattern {pattern!r}: {exc}") from exc
        self._emails = emails
        self._phones = phones
        # Phone numbers and extra patterns have no trigger, so every value is scanned then.
        self._quick = not (self._extra or phones)
        self._key_cache: dict[str, bool] = {}
        self._text_cache: dict[str, str] = {}

    def is_sensitive_key(self, key: str) -> bool:
        """Return whether the key *key* names a secret, so its whole value is masked."""
        cached = self._key_cache.get(key)
        if cached is not None:
            return cached

        lowered = key.lower()
        if lowered in self._allowed:
            result = False
        else:
            words = _words(key)
            joined = "".join(words)
            result = (
                any(word in self._secret_words for word in words)
                or joined in self._secret_words
                or any(pair in _SECRET_PAIRS for pair in zip(words, words[1:]))
                or any(_contains(words, sequence) for sequence in self._secret_sequences)
            )
        if len(self._key_cache) < 4096:
            self._key_cache[key] = result

        return result

    def redact_text(self, text: str) -> str:
        """Return *text* with every secret-looking part masked."""
        size = len(text)
        if size < _MIN_SCAN_LENGTH:
            return text
        if size > _CACHED_TEXT_LENGTH:
            return self._scan(text)

        cache = self._text_cache
        cached = cache.get(text)
        if cached is not None:
            return cached
        if self._quick and _is_plain_hex_id(text):
            # Not cached: such IDs are mostly unique and would push out the values that repeat.
            return text

        masked = self._scan(text)
        if len(cache) >= _TEXT_CACHE_SIZE:
            # Dropping everything is cheaper than tracking use, because the values that repeat return at once.
            cache.clear()
        cache[text] = masked

        return masked

    def _scan(self, text: str) -> str:
        if self._quick and _ANY_TRIGGER.search(text) is None:
            return text

        if _RULE_TRIGGER.search(text) is not None:
            for triggers, pattern in self._rules:
                for trigger in triggers:
                    if trigger in text:
                        text = pattern.sub(_keep_prefix, text)
                        break
        if _DIGIT_RUN.search(text):
            text = _CARD.sub(_card, text)
        if self._emails and "@" in text:
            text = _EMAIL.sub(MASK, text)
        if self._phones:
            text = _PHONE.sub(MASK, text)
        for pattern in self._extra:
            text = pattern.sub(MASK, text)

        return text

    def redact(self, value: Any, key: str | None = None, *, depth: int = 0) -> Any:
        """Return *value* with secrets masked: by *key*, then inside strings, dicts and lists."""
        if key is not None and self.is_sensitive_key(key):
            return MASK if value not in (None, "", [], {}) else value
        # Exact type tests first: they cost a fraction of an ABC isinstance check.
        kind = type(value)
        if kind is str:
            return self.redact_text(value)
        if kind in _PLAIN_TYPES:
            return value
        if isinstance(value, str):
            return self.redact_text(value)
        if depth > 8:
            return value
        if kind is dict or isinstance(value, Mapping):
            return {k: self.redact(v, str(k), depth=depth + 1) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self.redact(item, None, depth=depth + 1) for item in value)

        return value

    def redact_mapping(self, mapping: Mapping[str, Any]) -> dict[str, Any]:
        """Return a copy of *mapping* with secrets masked at every level."""
        return {key: self.redact(value, key) for key, value in mapping.items()}


def _from_environment() -> Redactor:
    def items(name: str) -> list[str]:
        return [item.strip() for item in os.environ.get(name, "").split(",") if item.strip()]

    patterns = [p for p in os.environ.get("DTC_OTEL_REDACT_PATTERNS", "").split("\n") if p.strip()]

    return Redactor(
        extra_keys=items("DTC_OTEL_REDACT_KEYS"),
        allowed_keys=items("DTC_OTEL_REDACT_ALLOW_KEYS"),
        extra_patterns=patterns,
        emails=os.environ.get("DTC_OTEL_REDACT_EMAILS", "").lower() in ("1", "true", "yes", "on"),
        phones=os.environ.get("DTC_OTEL_REDACT_PHONES", "").lower() in ("1", "true", "yes", "on"),
    )


_default: Redactor | None = None


def default_redactor() -> Redactor:
    """Return the process's redactor, built from the ``DTC_OTEL_REDACT_*`` settings on first use."""
    global _default
    if _default is None:
        _default = _from_environment()

    return _default


# Called when the default redactor is replaced, to drop results cached from the old one.
_change_hooks: list[Callable[[], None]] = []


def on_default_change(hook: Callable[[], None]) -> None:
    """Call *hook* whenever :func:`set_default_redactor` replaces the default redactor."""
    _change_hooks.append(hook)


def set_default_redactor(redactor: Redactor) -> None:
    """Replace the process's redactor, for apps that configure it in code."""
    global _default
    _default = redactor
    for hook in _change_hooks:
        hook()


def redact(value: Any, key: str | None = None) -> Any:
    """Mask secrets in *value* with the process's redactor."""
    return default_redactor().redact(value, key)
