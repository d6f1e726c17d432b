"""The one text normalisation, used on both sides of a match: OCR output and catalog text.

Case-folded, diacritics folded (å, ä -> a; ö -> o; é -> e), so "GRADDFIL" read off a carton
matches "Gräddfil" in the catalog.
"""

from __future__ import annotations

import re
import unicodedata

_TOKEN = re.compile(r"[^\W_]+")


def normalise_text(text: str) -> str:
    """Case-fold and strip diacritics (å/ä -> a, ö -> o, é -> e): the same on OCR and catalog text."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def tokens(text: str, *, min_len: int = 2) -> list[str]:
    """Normalised word tokens in reading order (letters and digits; punctuation splits words)."""
    return [t for t in _TOKEN.findall(normalise_text(text)) if len(t) >= min_len]
