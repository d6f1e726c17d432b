"""One ``<prefix>/events/basket`` payload, checked: JSON ``{"id", "skus", "ts", "token"}`` -> :class:`Basket`.

:func:`parse_basket` raises :class:`BasketRejected` with the reason :class:`~edge.recommend.baskets.BasketStore`
counts: oversized or malformed JSON, a missing or wrong ``token`` (when the device has one,
compared in constant time), too many skus, none of them in the catalog (issue 28, finding 7).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from edge.core.auth import token_matches
from edge.core.errors import InputError

MAX_PAYLOAD_BYTES = 256 * 1024
_MAX_TEXT = 128


class BasketRejected(InputError):
    """A basket event that cannot be counted; ``reason`` is one of :data:`edge.recommend.baskets.REJECT_REASONS`."""

    def __init__(self, reason: str, message: str, *, hint: str | None = None) -> None:
        self.reason = reason
        super().__init__(message, hint=hint)


@dataclass(frozen=True, slots=True)
class Basket:
    """One sold basket: a unique id, its distinct skus (first-seen order) and the sale time."""

    id: str
    skus: tuple[str, ...]
    ts: float


def parse_basket(payload: bytes | str, *, now: float, max_items: int, token: str | None = None,
                 known: Callable[[str], bool] | None = None) -> Basket:
    """Validate one basket event; raise :class:`BasketRejected` saying what is wrong with it.

    ``token``: the shared secret the event must carry as ``"token"``; ``known(sku)``: whether the
    catalog holds a sku (others are dropped from the basket).
    """
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise BasketRejected("malformed", f"basket event of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}",
                             hint="publish one basket per event")
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as e:
        raise BasketRejected("malformed", f"basket event is not JSON: {e}",
                             hint='send {"id": "...", "skus": ["..."], "ts": epoch seconds}') from e
    if not isinstance(doc, dict):
        raise BasketRejected("malformed", f"basket event must be a JSON object, got {type(doc).__name__}",
                             hint='send {"id": "...", "skus": ["..."]}')
    if token is not None and not token_matches(doc.get("token"), token):
        raise BasketRejected("unauthorised", "basket event without the right token",
                             hint="send the device's mqtt.command_token as \"token\"")
    unknown = set(doc) - {"id", "skus", "ts", "token"}
    if unknown:
        raise BasketRejected("malformed", f"basket event has unknown keys {sorted(unknown)}",
                             hint="only id, skus, ts and token are allowed")
    bid = doc.get("id")
    if isinstance(bid, bool) or not isinstance(bid, str | int) or not str(bid).strip() or len(str(bid)) > _MAX_TEXT:
        raise BasketRejected("malformed", f"basket id must be a non-empty string or integer, got {bid!r}",
                             hint="give every basket the POS transaction id, so replays count once")
    skus = doc.get("skus")
    if not isinstance(skus, list) or not all(isinstance(s, str) for s in skus):
        raise BasketRejected("malformed", f"basket {bid}: skus must be a list of strings",
                             hint='e.g. "skus": ["4001", "4002"]')
    clean = list(dict.fromkeys(s.strip() for s in skus if s.strip()))
    if any(len(s) > _MAX_TEXT for s in clean):
        raise BasketRejected("malformed", f"basket {bid}: a sku is longer than {_MAX_TEXT} characters")
    if not clean:
        raise BasketRejected("empty", f"basket {bid} has no skus", hint="publish only baskets with items")
    if len(clean) > max_items:
        raise BasketRejected("too_many_items", f"basket {bid} has {len(clean)} distinct skus (limit {max_items})",
                             hint="raise recommend.max_basket_items if such baskets are real")
    if known is not None:
        clean = [s for s in clean if known(s)]
        if not clean:
            raise BasketRejected("unknown_sku", f"basket {bid}: none of its skus is in the catalog",
                                 hint="publish the catalog's skus (storelens catalog import)")
    return Basket(id=str(bid).strip(), skus=tuple(clean), ts=_parse_ts(doc.get("ts"), bid, now))


def _parse_ts(ts: object, bid: object, now: float) -> float:
    if ts is None:
        return now
    if isinstance(ts, int | float) and not isinstance(ts, bool) and math.isfinite(ts):
        return float(ts)
    if isinstance(ts, str):
        try:
            dt = datetime.fromisoformat(ts.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            if dt.tzinfo is not None:
                return dt.timestamp()
    raise BasketRejected("malformed", f"basket {bid}: ts must be epoch seconds or ISO 8601 with a zone, got {ts!r}",
                         hint='e.g. "ts": 1732450000 or "ts": "2026-11-24T17:00:00Z"')
