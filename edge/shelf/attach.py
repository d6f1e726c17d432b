"""Wiring the shelf into a runtime: :func:`attach_shelf` (called by :func:`edge.pipeline.factory.assemble_runtime`).

The frame loop is not changed for the shelf: the :class:`~edge.shelf.monitor.ShelfMonitor` is one of
the runtime's decision listeners, its tick rides on the operations hooks' once-a-round ``tick``,
and the staff page's routes join the kiosk screen's server when ``kiosk_screen.enabled``.
"""

from __future__ import annotations

from typing import Any

from edge.core.config import Settings
from edge.shelf.monitor import ShelfMonitor
from edge.shelf.page import attach_page


class _ShelfHooks:
    """The runtime's operations hooks with the monitor's tick added to each loop round, and its final tick
    and close at shutdown; everything else is the wrapped :class:`~edge.ops.hooks.RuntimeHooks`."""

    def __init__(self, inner: Any, monitor: ShelfMonitor) -> None:
        self._inner, self._monitor = inner, monitor

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def tick(self, rt: Any, **kw: Any) -> None:
        self._inner.tick(rt, **kw)
        self._monitor.tick()

    def stopping(self) -> None:
        self._monitor.tick()
        self._inner.stopping()

    def stopped(self, rt: Any) -> None:
        self._inner.stopped(rt)
        self._monitor.close()


def attach_shelf(rt: Any) -> ShelfMonitor | None:
    """A monitor for the runtime's shelf cameras (None without any, or with ``shelf.enabled = false``): fed by
    the runtime's decision listeners, ticked with its hooks, publishing through ``rt.publish_result``."""
    settings: Settings = rt.settings
    if not settings.shelf.enabled or not any(c.mode == "shelf" for c in settings.cameras):
        return None
    monitor = ShelfMonitor(settings, publish=rt.publish_result)
    rt.decision_listeners.append(monitor.on_match)
    rt.hooks = _ShelfHooks(rt.hooks, monitor)
    rt.shelf = monitor
    rt.extra_status["shelf"] = monitor.status  # open alerts in the retained status message
    attach_page(rt, monitor)  # /shelf on the kiosk screen's server, when it runs
    return monitor
