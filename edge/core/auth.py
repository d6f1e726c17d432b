"""Shared secrets, checked one way everywhere: MQTT commands and events, the kiosk page, the staff pages.

:func:`token_matches` compares in constant time (``hmac.compare_digest``), so the time a refusal
takes says nothing about how much of a guess was right (issue 28, finding 8).
"""

from __future__ import annotations

import hmac
from typing import Any


def token_matches(given: Any, expected: str) -> bool:
    """Whether ``given`` is the shared secret ``expected``; anything not a string never matches."""
    if not isinstance(given, str):
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass"))
