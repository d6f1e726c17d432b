"""The operations sections of the config: ``[metrics]``, ``[homeassistant]``, ``[health]``, ``[kiosk_screen]``.

Kept beside :mod:`edge.core.config` (which puts them on the root :class:`~edge.core.config.Settings`)
so that module stays readable; the same rules apply: unknown keys are errors, values are frozen.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MetricsSettings(_Section):
    """Prometheus metrics (edge.ops.metrics) at ``http://<host>:<port>/metrics``."""

    enabled: bool = Field(False, description="Serve Prometheus metrics at /metrics")
    host: str = Field("127.0.0.1", min_length=1, description="Address to listen on: 127.0.0.1 = this box only; "
                      "0.0.0.0 lets a remote Prometheus in")
    port: int = Field(9847, ge=0, le=65535, description="TCP port of the metrics endpoint (0 = any free port, logged)")


class HomeAssistantSettings(_Section):
    """Home Assistant MQTT discovery (edge.ops.discovery): each camera region becomes a sensor."""

    enabled: bool = Field(False, description="Publish retained Home Assistant discovery configs (needs [mqtt])")
    discovery_prefix: str = Field("homeassistant", min_length=1, max_length=128, pattern=r"^[^#+]+$",
                                  description="Home Assistant's MQTT discovery prefix")
    device_name: str | None = Field(None, min_length=1, max_length=128,
                                    description="Device name in Home Assistant; empty = StoreLens <store> <id>")


class HealthSettings(_Section):
    """The heartbeat file the frame loop writes and the thresholds `storelens health` judges it by."""

    heartbeat_s: float = Field(1.0, gt=0, le=60, description="How often the frame loop rewrites the status file")
    status_file: Path | None = Field(None, description="Health status file; empty = <catalog.data_dir>/health.json")
    loop_stall_s: float = Field(30.0, gt=0, le=3600, description="Unhealthy when the frame loop has not written the "
                                "status file for this long (the systemd watchdog restarts it after WatchdogSec)")
    broker_down_s: float = Field(60.0, ge=0, le=86400, description="Unhealthy when the broker is unreachable this long")
    camera_down_s: float = Field(30.0, ge=0, le=86400, description="Unhealthy when a camera is down this long")
    outbox_ratio: float = Field(0.8, gt=0, le=1, description="Unhealthy when the outbox holds this share of "
                                "mqtt.outbox_max_messages (it drops the oldest when full)")


class KioskScreenSettings(_Section):
    """The kiosk screen (edge.kiosk): a page at ``http://<host>:<port>/`` fed live by ``storelens run``."""

    enabled: bool = Field(False, description="Serve the kiosk screen from `storelens run`")
    host: str = Field("127.0.0.1", min_length=1, max_length=255, description="Address to listen on: 127.0.0.1 = "
                      "this box only (the kiosk's own browser); 0.0.0.0 shows the page to the network")
    port: int = Field(8780, ge=1, le=65535, description="TCP port of the page")
    language: Literal["en", "sv"] = Field("en", description="Language of the screen's words")
    camera: str | None = Field(None, min_length=1, max_length=64,
                               description="Camera whose decisions the screen shows; empty = the first kiosk camera")
    title: str | None = Field(None, min_length=1, max_length=64,
                              description="Heading; empty = 'Price check' in the screen's language")
    currency: str = Field("SEK", pattern=r"^[A-Z]{3}$", description="ISO 4217 currency of catalog prices")
    candidates: int = Field(4, ge=1, le=8, description="Ranked alternatives shown: the pick list "
                            "under a known answer ('Not this product?') and the cards for an unknown item")
    search_results: int = Field(8, ge=1, le=24, description="Cards per search")
    recommendations: int = Field(4, ge=0, le=12, description="Cards per recommendation row (0 = none)")
    max_request_bytes: int = Field(16384, ge=1024, le=1048576, description="Largest search/confirm request "
                                   "(never above mqtt.command_max_bytes)")
    confirmations_max: int = Field(5000, ge=1, le=1_000_000, description="Confirmed crops kept on the device in "
                                   "<catalog.data_dir>/confirmations (oldest dropped)")
