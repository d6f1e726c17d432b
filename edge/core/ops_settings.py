"""The operations sections of the config: ``[metrics]``, ``[homeassistant]``, ``[health]``, ``[kiosk_screen]``.

Kept beside :mod:`edge.core.config` (which puts them on the root :class:`~edge.core.config.Settings`)
so that module stays readable; the same rules apply: unknown keys are errors, values are frozen.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_core import PydanticCustomError

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


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
    token: SecretStr | None = Field(None, min_length=16, max_length=256, description="The page's own secret (never "
                                    "mqtt.command_token): open the page once as /?token=...; it then rides in an "
                                    "HttpOnly cookie. Required when host is not loopback; empty on loopback = "
                                    "any local process may use the page (warned at start)")
    allowed_hosts: tuple[str, ...] = Field((), max_length=32, description="Host names the page may be reached by "
                                           "when bound off loopback (DNS rebinding guard); loopback names and IP "
                                           "addresses are always allowed")
    max_connections: int = Field(64, ge=2, le=4096, description="Open connections at most (more are closed at once)")
    max_event_clients: int = Field(8, ge=1, le=1024, description="Live pages (/events streams) at most")
    header_timeout_s: float = Field(10.0, gt=0, le=300, description="A connection must send a request's headers "
                                    "within this long (slowloris guard); also bounds a request body's read")

    @model_validator(mode="after")
    def _token_off_loopback(self) -> KioskScreenSettings:
        if self.enabled and self.host not in LOOPBACK_HOSTS and self.token is None:
            raise PydanticCustomError("kiosk_token_required",
                                      "kiosk_screen.host = {host} shows the page to the network: set "
                                      "kiosk_screen.token (STORELENS_KIOSK_SCREEN__TOKEN) so only the kiosk's "
                                      "browser can use it", {"host": self.host})
        if self.max_event_clients >= self.max_connections:
            raise PydanticCustomError("kiosk_caps", "kiosk_screen.max_event_clients ({sse}) must be below "
                                      "max_connections ({conns}): pages also fetch images and search",
                                      {"sse": self.max_event_clients, "conns": self.max_connections})
        return self
