"""The kiosk screen's words, per language (``kiosk_screen.language``); every language has every key.

``default_title`` heads the page when ``kiosk_screen.title`` is not set (a shopper should not
read the store's device id).
"""

from __future__ import annotations

LANGUAGES = ("en", "sv")
LOCALES = {"en": "en-GB", "sv": "sv-SE"}  # number and price formatting on the page (Intl)

LABELS: dict[str, dict[str, str]] = {
    "en": {
        "default_title": "Price check",
        "empty_title": "Nothing on the tray",
        "empty_hint": "Place a product on the tray to see its price and where to find it.",
        "unknown_title": "Is it one of these?",
        "unknown_hint": "Tap the right product — or search for it below.",
        "search_placeholder": "Search for a product…",
        "search_button": "Search",
        "search_title": "Search results",
        "no_results": "No products found. Try another word.",
        "price": "Price",
        "no_price": "Price at the till",
        "location": "Find it at",
        "together": "Bought together",
        "popular": "Popular in the store",
        "similar": "Similar products",
        "not_this": "Not this product?",
        "pick_search": "Not listed? Search",
        "confirmed": "Thank you! Confirmed.",
        "confirm_failed": "Could not confirm that. Please try again.",
        "close": "Close",
        "live": "Live",
        "reconnecting": "Reconnecting…",
        "store_offline": "Store link offline — results are kept",
    },
    "sv": {
        "default_title": "Priskoll",
        "empty_title": "Inget på brickan",
        "empty_hint": "Lägg en vara på brickan för att se pris och var den finns.",
        "unknown_title": "Är det någon av dessa?",
        "unknown_hint": "Tryck på rätt vara — eller sök efter den nedan.",
        "search_placeholder": "Sök efter en vara…",
        "search_button": "Sök",
        "search_title": "Sökresultat",
        "no_results": "Inga varor hittades. Prova ett annat ord.",
        "price": "Pris",
        "no_price": "Pris i kassan",
        "location": "Hittas vid",
        "together": "Köps ofta tillsammans",
        "popular": "Populärt i butiken",
        "similar": "Liknande varor",
        "not_this": "Fel vara?",
        "pick_search": "Inte med? Sök",
        "confirmed": "Tack! Bekräftat.",
        "confirm_failed": "Det gick inte att bekräfta. Försök igen.",
        "close": "Stäng",
        "live": "Live",
        "reconnecting": "Återansluter…",
        "store_offline": "Butikslänken är nere — resultaten sparas",
    },
}


def labels_for(language: str) -> dict[str, str]:
    """The words of ``language`` (English for a language without its own)."""
    return LABELS.get(language, LABELS["en"])
