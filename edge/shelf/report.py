"""The daily shelf report: per facing and per product, time on shelf, time empty, alerts, time to restock.

Computed from :class:`~edge.shelf.history.ShelfHistory` over a window ``[since, until]``:

- each facing's timeline starts with its state at ``since`` (the last change before it; ``no_data``
  when there was none) and changes at every state row, so a share is *time* in a state over the
  window's length (``on_shelf`` = ``ok``);
- ``alerts``: alerts opened in the window; ``restock_median_s``: over the window's ``empty`` alerts,
  the time from the facing going empty (the alert's ``since``) to its first ``ok`` state after;
- a product's row adds up the facings planned for it (the same shares over their summed time).

Printed as a table, JSON (``--json``), CSV (``--csv``) or a small self-contained HTML page (``--html``).
"""

from __future__ import annotations

import csv
import html
import io
import re
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from edge.core.errors import InputError
from edge.shelf.alerts import Alert
from edge.shelf.history import ShelfHistory, StateRow

STATES = ("ok", "empty", "misplaced", "unknown", "no_data")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``90``, ``45s``, ``30m``, ``24h``, ``7d`` -> seconds; anything else is an :class:`InputError`."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if m is None or float(m.group(1)) <= 0:
        raise InputError(f"not a duration: {text!r}", hint="use e.g. 24h, 30m, 7d or a number of seconds")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


@dataclass(slots=True)
class Line:
    """One facing's (or product's) figures over the window."""

    key: str
    expected_sku: str | None
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STATES, 0.0))
    alerts: int = 0
    restocks_s: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        total = sum(self.seconds.values())
        share = {s: round(v / total, 4) if total else 0.0 for s, v in self.seconds.items()}
        return {"key": self.key, "expected_sku": self.expected_sku, "on_shelf": share["ok"],
                "empty": share["empty"], "misplaced": share["misplaced"], "unknown": share["unknown"],
                "no_data": share["no_data"], "empty_s": round(self.seconds["empty"], 1), "alerts": self.alerts,
                "restock_median_s": round(statistics.median(self.restocks_s), 1) if self.restocks_s else None}


def build_report(history: ShelfHistory, since: float, until: float) -> dict[str, Any]:
    """The report's figures (see the module docstring) as a JSON-ready dict."""
    by_facing: dict[str, list[StateRow]] = defaultdict(list)
    for row in history.states(since, until):
        by_facing[f"{row.camera}/{row.facing}"].append(row)
    lines: dict[str, Line] = {}
    for key, rows in by_facing.items():
        line = lines[key] = Line(key, rows[-1].expected_sku)
        t, state = since, "no_data"
        for r in rows:
            start = max(r.ts, since)
            line.seconds[state] += start - t
            t, state = start, r.state
        line.seconds[state] += until - t
    for a in history.alerts(since, until):
        key = f"{a.camera}/{a.facing}"
        line = lines.setdefault(key, Line(key, a.expected_sku))
        line.alerts += 1
        if a.state == "empty" and (back := _back_on_shelf(by_facing.get(key, []), a)) is not None:
            line.restocks_s.append(back - a.since)
    products: dict[str, Line] = {}
    for line in lines.values():
        sku = line.expected_sku or "-"
        p = products.setdefault(sku, Line(sku, line.expected_sku))
        for s, v in line.seconds.items():
            p.seconds[s] += v
        p.alerts += line.alerts
        p.restocks_s += line.restocks_s
    return {"since": since, "until": until, "window_s": until - since,
            "facings": [lines[k].to_dict() for k in sorted(lines)],
            "products": [products[k].to_dict() for k in sorted(products)]}


def _back_on_shelf(rows: list[StateRow], alert: Alert) -> float | None:
    return next((r.ts for r in rows if r.ts > alert.since and r.state == "ok"), None)


COLUMNS = ("key", "expected_sku", "on_shelf", "empty", "misplaced", "unknown", "no_data", "empty_s", "alerts",
           "restock_median_s")


def to_csv(report: dict[str, Any]) -> str:
    """One row per facing then per product (``level`` says which)."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(("level", *COLUMNS))
    for level in ("facings", "products"):
        for row in report[level]:
            w.writerow((level[:-1], *("" if row[c] is None else row[c] for c in COLUMNS)))
    return out.getvalue()


def to_text(report: dict[str, Any]) -> str:
    """The table ``storelens shelf report`` prints."""
    hours = report["window_s"] / 3600
    out = [f"shelf report over the last {hours:g} h ({len(report['facings'])} facings)"]
    head = f"{'':<32} {'on shelf':>8} {'empty':>6} {'misplcd':>7} {'unknown':>7} {'no data':>7} {'alerts':>6} " \
           f"{'restock p50':>11}"
    for level, title in (("facings", "facing"), ("products", "product")):
        out += ["", title, head]
        for r in report[level]:
            restock = "-" if r["restock_median_s"] is None else f"{r['restock_median_s'] / 60:.1f} min"
            out.append(f"{r['key'][:32]:<32} {r['on_shelf']:>8.1%} {r['empty']:>6.1%} {r['misplaced']:>7.1%} "
                       f"{r['unknown']:>7.1%} {r['no_data']:>7.1%} {r['alerts']:>6} {restock:>11}")
    return "\n".join(out)


def to_html(report: dict[str, Any], *, title: str = "Shelf report") -> str:
    """A small self-contained page: one stacked bar per product and per facing (no scripts, no network)."""
    colours = {"ok": "#2e7d32", "empty": "#c62828", "misplaced": "#ef6c00", "unknown": "#757575",
               "no_data": "#e0e0e0"}

    def bar(r: dict[str, Any]) -> str:
        share = {s: r["on_shelf" if s == "ok" else s] for s in STATES}
        parts = "".join(f'<span style="width:{v * 100:.2f}%;background:{colours[s]}" title="{s} {v:.1%}">'
                        f"</span>" for s, v in share.items() if v > 0)
        restock = "-" if r["restock_median_s"] is None else f"{r['restock_median_s'] / 60:.1f} min"
        return (f"<tr><td>{html.escape(r['key'])}</td><td><div class=bar>{parts}</div></td>"
                f"<td>{r['on_shelf']:.1%}</td><td>{r['empty']:.1%}</td><td>{r['alerts']}</td><td>{restock}</td></tr>")

    legend = " ".join(f'<span class=key style="background:{c}"></span>{s}' for s, c in colours.items())
    head = "<tr><th></th><th></th><th>on shelf</th><th>empty</th><th>alerts</th><th>restock p50</th></tr>"
    body = "".join(f"<h2>{t}</h2><table>{head}{''.join(bar(r) for r in report[k])}</table>"
                   for k, t in (("products", "Products"), ("facings", "Facings")))
    style = ("body{font:15px system-ui,sans-serif;margin:1em;color:#222}table{border-collapse:collapse;width:100%}"
             "td,th{padding:4px 6px;text-align:left;white-space:nowrap}.bar{display:flex;width:100%;min-width:160px;"
             "height:14px;background:#eee}.bar span{display:block;height:100%}td:nth-child(2){width:50%}"
             ".key{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:middle}")
    return (f"<!doctype html><html><head><meta charset=utf-8><meta name=viewport content='width=device-width'>"
            f"<title>{html.escape(title)}</title><style>{style}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p>last {report['window_s'] / 3600:g} h &middot; {legend}</p>{body}</body></html>")
