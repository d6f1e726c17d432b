"""StoreLens settings: one pydantic-settings root model.

Sources, highest priority first: explicit arguments, ``STORELENS_*`` environment variables
(``__`` separates nesting levels, e.g. ``STORELENS_MQTT__PORT=8883``), then the TOML file
given to :func:`load_settings`. Unknown keys are errors (``extra="forbid"``) so a typo never
silently falls back to a default; every field has a description and bounds.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from edge.core.config_paths import relative_to_file
from edge.core.errors import ConfigError
from edge.core.fleet_settings import FleetSettings
from edge.core.learning_settings import LearningSettings
from edge.core.ops_settings import HealthSettings, HomeAssistantSettings, KioskScreenSettings, MetricsSettings
from edge.core.shelf_settings import ShelfSettings

ENV_PREFIX = "STORELENS_"


class Section(BaseModel):
    """Base for nested sections: unknown keys are errors, values are immutable once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DeviceSettings(Section):
    store: str = Field(description="Store identifier, used in MQTT topics", min_length=1, max_length=64,
                       pattern=r"^[A-Za-z0-9_.-]+$")
    id: str = Field(description="This device's identifier within the store", min_length=1, max_length=64,
                    pattern=r"^[A-Za-z0-9_.-]+$")


class LoggingSettings(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Minimum log level")
    format: Literal["kv", "json"] = Field("kv", description="kv: key=value lines; json: one JSON object a line")


class ModelSettings(Section):
    image_bundle: Path | None = Field(None, description="Image encoder bundle folder; empty = the embedded default")
    text_bundle: Path | None = Field(None, description="Text encoder bundle folder; empty = the embedded default")
    backend: Literal["onnxruntime", "openvino"] = Field("onnxruntime", description="Inference backend")
    precision: Literal["fp32", "int8"] = Field("int8", description="Which model file of the bundle to run")
    threads: int = Field(1, ge=1, le=64, description="Inference threads per encoder")
    text_backend: Literal["auto", "onnxruntime", "openvino"] = Field(
        "auto", description="Text encoder backend; auto = onnxruntime, which runs the text bundle's dynamic-int8 "
        "model faster than OpenVINO does")


class CatalogSettings(Section):
    data_dir: Path = Field(Path("var/storelens"), description="Folder for catalog.db, indexes and the outbox")
    index_dtype: Literal["f32", "f16", "i8"] = Field("i8", description="Vector storage type of the USearch indexes")
    view: bool = Field(False, description="Memory-map indexes instead of loading them (large catalogs)")
    image_aggregate: Literal["max", "mean"] = Field(
        "mean", description="How a product's reference-photo hits become its score: best hit, or mean of its top 3")
    expansion_search: int = Field(64, ge=8, le=4096,
                                  description="HNSW search breadth: higher = better recall, slower queries")
    text_search: Literal["shopper", "plain"] = Field("shopper", description="Text search: shopper (synonyms, typos, "
                                                     "Swedish/English, per-angle fields; docs/search.md) or plain")
    synonyms: Path | None = Field(None, description="The store's own synonym file (TOML), read after the default")
    default_synonyms: bool = Field(True, description="Read the shipped grocery synonyms (edge/text/synonyms.toml)")


class RoiSettings(Section):
    name: str = Field(description="Region name, unique per camera", min_length=1, max_length=64)
    rect: tuple[float, float, float, float] = Field(
        (0.0, 0.0, 1.0, 1.0), description="Normalised x, y, width, height of the region in the frame"
    )
    expected_sku: str | None = Field(None, description="Shelf mode: the sku planned for this slot")

    @field_validator("rect")
    @classmethod
    def _inside_frame(cls, v: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        x, y, w, h = v
        if not (0 <= x < 1 and 0 <= y < 1 and 0 < w <= 1 and 0 < h <= 1 and x + w <= 1.0001 and y + h <= 1.0001):
            raise ValueError("rect must be x, y, w, h in [0, 1] with the region inside the frame")
        return v


class CameraSettings(Section):
    name: str = Field(
        description="Camera name, used in MQTT topics", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$"
    )
    source: str = Field(description="Camera index (0), RTSP/HTTP URL, video file, image folder or glob")
    loop: bool = Field(False, description="Replay a video file or folder forever")
    hold_frames: int = Field(1, ge=1, le=10000, description="Image folder/glob/file: show each image this many frames")
    fps: float = Field(15.0, gt=0, le=120, description="Frame rate cap")
    resize_width: int | None = Field(None, ge=64, le=7680, description="Resize frames to this width first")
    mode: Literal["kiosk", "shelf"] = Field("kiosk", description="kiosk: one product shown; shelf: planogram slots")
    rois: list[RoiSettings] = Field(default_factory=lambda: [RoiSettings(name="full")],
                                    description="Regions of interest", min_length=1, max_length=64)

    @model_validator(mode="after")
    def _rois_fit_the_mode(self) -> CameraSettings:
        names = [r.name for r in self.rois]
        if len(names) != len(set(names)):
            raise PydanticCustomError("duplicate_roi", "region names of camera {camera} must be unique, got {names}",
                                      {"camera": self.name, "names": names})
        planned = [r.name for r in self.rois if r.expected_sku is not None]
        if planned and self.mode != "shelf":
            raise PydanticCustomError("expected_sku_needs_shelf",
                                      "expected_sku of {rois} only applies to mode = \"shelf\" cameras",
                                      {"rois": planned})
        return self


class GateSettings(Section):
    change_threshold: float = Field(0.02, ge=0, le=1, description="Mean abs pixel change (0-1) that counts as change")
    steady_frames: int = Field(2, ge=0, le=100, description="Kiosk: frames without change before embedding")
    enabled: bool = Field(True, description="Gate frames at all (off: embed every frame; for benchmarks)")
    frames_per_view: int | None = Field(
        None, ge=1, le=100, description="Frames embedded per unchanged view before gating; empty = decision.window")


class DecisionSettings(Section):
    window: int = Field(5, ge=1, le=100, description="Frames in the voting window per region")
    min_frames: int = Field(2, ge=1, le=100, description="Frames needed before deciding")
    agreement: float = Field(0.6, gt=0, le=1, description="Share of window frames that must agree")
    threshold: float | None = Field(None, ge=-1, le=1, description="Top-score threshold; empty = calibrated value")
    margin: float | None = Field(None, ge=0, le=2, description="Top-1 minus top-2 margin; empty = calibrated value")
    uncalibrated_threshold: float = Field(0.5, ge=-1, le=1, description="Top-score threshold when neither "
                                          "threshold nor a stored calibration (storelens calibrate) sets one")
    uncalibrated_margin: float = Field(0.02, ge=0, le=2, description="Margin when neither margin nor a stored "
                                       "calibration sets one")
    top_k: int = Field(5, ge=1, le=100, description="Candidates per decision")
    heartbeat_s: float = Field(30.0, gt=0, le=3600, description="Re-publish an unchanged decision this often")
    aggregate: Literal["mean", "max", "median"] = Field("mean", description="How a product's scores across the "
                                                        "window combine into its candidate score")
    empty_sku: str = Field("EMPTY", min_length=1, max_length=128,
                           description="Shelf mode: the catalog sku whose images show an empty slot")

    @model_validator(mode="after")
    def _min_le_window(self) -> DecisionSettings:
        if self.min_frames > self.window:
            raise PydanticCustomError("min_frames_over_window", "min_frames ({min_frames}) must not exceed window "
                                      "({window})", {"min_frames": self.min_frames, "window": self.window})
        return self


class TlsSettings(Section):
    enabled: bool = Field(False, description="Use TLS to the broker")
    ca_file: Path | None = Field(None, description="CA bundle; empty = system CAs")
    cert_file: Path | None = Field(None, description="Client certificate (mutual TLS)")
    key_file: Path | None = Field(None, description="Client key (mutual TLS)")
    insecure: bool = Field(False, description="Skip hostname verification (testing only)")

    @model_validator(mode="after")
    def _consistent(self) -> TlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            given, missing = ("cert_file", "key_file") if self.key_file is None else ("key_file", "cert_file")
            raise PydanticCustomError("tls_client_pair", "{given} is set without {missing}: mutual TLS needs both",
                                      {"given": given, "missing": missing})
        ignored = [k for k in ("ca_file", "cert_file", "key_file") if getattr(self, k) is not None]
        ignored += ["insecure"] if self.insecure else []
        if ignored and not self.enabled:
            raise PydanticCustomError("tls_disabled", "{fields} would be ignored: set enabled = true to use TLS",
                                      {"fields": ", ".join(ignored)})
        return self


class MqttSettings(Section):
    enabled: bool = Field(True, description="Publish to a broker; off = print decisions and keep them in the outbox")
    host: str = Field("localhost", description="Broker host", min_length=1)
    port: int = Field(1883, ge=1, le=65535, description="Broker port")
    protocol: Literal["5", "3.1.1"] = Field("5", description="MQTT protocol version")
    username: str | None = Field(None, description="Broker user name")
    password: SecretStr | None = Field(None, description="Broker password (never printed)")
    tls: TlsSettings = Field(default_factory=TlsSettings, description="TLS settings")
    topic_prefix: str | None = Field(None, description="Topic prefix; empty = storelens/<store>/<device>")
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keepalive")
    qos: Literal[0, 1, 2] = Field(1, description="QoS of match, planogram and reply messages")
    outbox_max_messages: int = Field(100_000, ge=10, le=10**7, description="Outbox bound (oldest dropped, counted)")
    outbox_max_age_s: float = Field(7 * 86400, gt=0, description="Messages older than this (running time, not "
                                    "wall clock) are dropped (counted)")
    outbox_durability: Literal["process", "power"] = Field(
        "process", description="process: survives a crash (synchronous=NORMAL); power: survives power loss (FULL)"
    )
    stats_interval_s: float = Field(10.0, gt=0, le=3600, description="Period of the stats message")
    command_max_bytes: int = Field(8 * 1024 * 1024, ge=1024, le=64 * 1024 * 1024, description="Largest command payload")
    enroll_dir: Path | None = Field(None, description="Folder that enroll commands may read image paths from")
    command_token: SecretStr | None = Field(
        None, description="If set, every cmd/<verb> payload must carry this value as \"token\" (else: unauthorised)")
    reconnect_min_s: float = Field(1.0, ge=1, le=60, description="First reconnect delay (doubles up to the max)")
    reconnect_max_s: float = Field(30.0, ge=1, le=3600, description="Longest reconnect delay")
    flush_timeout_s: float = Field(5.0, ge=0, le=300, description="Shutdown: how long to wait for the outbox to drain")
    max_inflight: int = Field(100, ge=1, le=65535,
                              description="QoS 1/2 messages handed to the broker and not yet acknowledged, at most")

    @model_validator(mode="after")
    def _consistent(self) -> MqttSettings:
        if self.reconnect_min_s > self.reconnect_max_s:
            raise PydanticCustomError("reconnect_range",
                                      "reconnect_min_s ({min}) must not exceed reconnect_max_s ({max})",
                                      {"min": self.reconnect_min_s, "max": self.reconnect_max_s})
        if self.password is not None and not self.username:
            raise PydanticCustomError("password_without_username",
                                      "password is set without username: the broker would never see it", {})
        return self


class RecommendSettings(Section):
    """Recommendations: bought-together from sold baskets (MQTT events/basket), similar from product vectors."""

    in_match_messages: bool = Field(False, description="Add a `recommendations` field to kiosk match messages")
    k: int = Field(5, ge=1, le=100, description="Recommendations returned when the caller does not say how many")
    method: Literal["auto", "ease", "pmi", "cooccurrence"] = Field(
        "auto",
        description="Bought-together score: ease (item-item linear model), pmi (shrunk PMI), "
        "cooccurrence (raw counts); auto = ease up to ease_max_items products, else pmi",
    )
    ease_lambda: float = Field(50.0, gt=0, le=1e7, description="EASE L2 regularisation (larger = closer to popularity)")
    ease_max_items: int = Field(2000, ge=2, le=20000, description="Above this many basket products auto uses pmi "
                                "(an EASE rebuild is an n x n inverse)")
    popularity_prior: float = Field(0.1, ge=0, le=10, description="Bought together: weight of popularity "
                                    "(support / max support) added to association scores")
    shrinkage: float = Field(
        20.0, ge=0, le=1e6, description="PMI shrinkage: pair weight that halves a rare pair's score"
    )
    half_life_days: float | None = Field(
        30.0, gt=0, le=3650, description="Basket evidence halves in weight every this many days; empty = no decay"
    )
    min_support: float = Field(
        1.0,
        ge=0,
        le=1e6,
        description="Decayed basket count a product needs before its "
        "bought-together list is used (below: popularity, then similar)",
    )
    neighbours: int = Field(200, ge=1, le=10000, description="Scored neighbours kept per product in the model")
    refresh_s: float = Field(
        300.0,
        ge=0,
        le=86400,
        description="Rebuild the model at most this often when new baskets arrived, in the background while the "
        "old one serves (0 = on the next request): a running box recommends from new baskets up to this long after "
        "they arrived, while `storelens recommend` (a new process) counts them at once",
    )
    dedup_window_days: float = Field(30.0, gt=0, le=3650, description="Basket ids are remembered this long; "
                                     "older baskets are rejected as stale (they could not be de-duplicated)")
    max_basket_items: int = Field(200, ge=1, le=10000, description="Baskets with more distinct skus are rejected")
    max_baskets_per_minute: int = Field(600, ge=1, le=100_000, description="Baskets counted a minute at most "
                                        "(the rest rejected as `rate`): a flood of forged events stays bounded")
    near_duplicate: float = Field(
        0.98,
        gt=0,
        le=1,
        description="Similar: cosine at or above which a product is a near-duplicate of the query and left out",
    )
    image_weight: float = Field(0.5, ge=0, le=1, description="Similar: weight of image vs text similarity")


class OcrSettings(Section):
    """Label text (edge.text.ocr): read off steady ROI crops on a background thread, fused with the image score."""

    enabled: bool = Field(True, description="Read label text off steady ROI crops and fuse it (edge.text.fusion)")
    threads: int = Field(1, ge=1, le=16, description="onnxruntime threads of the OCR models (off the capture thread)")
    det_side: int = Field(480, ge=160, le=1536,
                          description="OCR detector short side in px (larger reads smaller print, costs more)")
    min_score: float = Field(0.5, ge=0, le=1, description="Drop text lines the recogniser is less sure of")
    change_threshold: float = Field(0.02, ge=0, le=1,
                                    description="Mean abs change (0-1) of a ROI view that invalidates its cached text")


class Settings(BaseSettings):
    """The root of a StoreLens config file (see configs/*.toml for commented examples)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True)

    device: DeviceSettings = Field(description="Who this device is")
    logging: LoggingSettings = Field(default_factory=LoggingSettings, description="Log format and level")
    model: ModelSettings = Field(default_factory=ModelSettings, description="Encoder bundles and backend")
    catalog: CatalogSettings = Field(default_factory=CatalogSettings, description="Catalog and index storage")
    cameras: list[CameraSettings] = Field(default_factory=list, description="Frame sources", max_length=32)
    gate: GateSettings = Field(default_factory=GateSettings, description="Frame gating")
    decision: DecisionSettings = Field(default_factory=DecisionSettings, description="Voting and unknown rejection")
    mqtt: MqttSettings = Field(default_factory=MqttSettings, description="Broker connection and outbox")
    recommend: RecommendSettings = Field(default_factory=RecommendSettings, description="Recommendations")
    ocr: OcrSettings = Field(default_factory=OcrSettings, description="Label text reading (OCR)")
    metrics: MetricsSettings = Field(default_factory=MetricsSettings, description="Prometheus metrics endpoint")
    homeassistant: HomeAssistantSettings = Field(default_factory=HomeAssistantSettings, description="HA discovery")
    health: HealthSettings = Field(default_factory=HealthSettings, description="Heartbeat file and health thresholds")
    kiosk_screen: KioskScreenSettings = Field(default_factory=KioskScreenSettings, description="Kiosk screen page")
    fleet: FleetSettings = Field(default_factory=FleetSettings, description="Catalog builds and snapshot updates")
    learning: LearningSettings = Field(default_factory=LearningSettings, description="Confirmed crops as photos")
    shelf: ShelfSettings = Field(default_factory=ShelfSettings, description="Shelf alerts, history, staff page")
    jsonl_out: Path | None = Field(None, description="Also append every decision to this JSONL file")

    @model_validator(mode="after")
    def _unique_names(self) -> Settings:
        names = [c.name for c in self.cameras]
        if len(names) != len(set(names)):
            raise PydanticCustomError("duplicate_camera", "camera names must be unique, got {names}", {"names": names})
        return self

    @property
    def topic_prefix(self) -> str:
        return self.mqtt.topic_prefix or f"storelens/{self.device.store}/{self.device.id}"

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)  # env and file are merged by load_settings()


def read_toml(path: Path) -> dict[str, Any]:
    """Read a TOML config file, turning I/O and syntax errors into :class:`ConfigError`."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}", hint="pass an existing file, e.g. configs/kiosk.toml")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML: {e}", hint="fix the syntax at the position shown") from e


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """File, then environment, then ``overrides``; raise :class:`SettingsError` listing every problem."""
    try:
        # Environment beats the file; explicit overrides beat both. Merged here (not by pydantic-settings' own
        # sources) so that an env var can override one nested key of a section the file sets, and every error
        # names the final key path. Relative paths in the file are relative to the file (config_paths).
        file = relative_to_file(read_toml(path), path) if path else {}
        return Settings(**_deep_merge(_deep_merge(file, _env_tree()), overrides))
    except ValidationError as e:
        raise SettingsError.from_validation(e, source=str(path) if path else "<environment>") from e


def _env_tree() -> dict[str, Any]:
    """``STORELENS_A__B=v`` environment variables as a nested dict (values parsed as JSON if they can be)."""
    tree: dict[str, Any] = {}
    for key, raw in os.environ.items():
        if not key.upper().startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in key[len(ENV_PREFIX) :].split("__") if p]
        if not parts:
            continue
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        node = tree
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return tree


class SettingsError(ConfigError):
    """Invalid settings; ``problems`` holds (key, value, message) for each one."""

    def __init__(self, problems: list[tuple[str, str, str]], source: str) -> None:
        self.problems = problems
        lines = "; ".join(f"{k} = {v} -> {m}" for k, v, m in problems)
        super().__init__(f"{source}: {len(problems)} invalid setting(s): {lines}",
                         hint="fix the keys named (storelens validate-config FILE lists them)")

    @classmethod
    def from_validation(cls, e: ValidationError, source: str) -> SettingsError:
        probs = []
        for err in e.errors():
            key = ".".join(str(p) for p in err["loc"]) or "<root>"
            value = "<missing>" if err["type"] == "missing" else repr(_masked(key, err.get("input")))
            msg = "unknown key (not a StoreLens setting)" if err["type"] == "extra_forbidden" else err["msg"]
            probs.append((key, value, msg))
        return cls(probs, source)


SECRET_KEYS = ("password", "command_token", "token")
MASK = "**********"


def _masked(key: str, value: Any) -> Any:
    """``value`` with every secret replaced by :data:`MASK` (an error's input may be a whole section)."""
    if key.rsplit(".", 1)[-1] in SECRET_KEYS:
        return MASK
    if isinstance(value, dict):
        return {k: _masked(str(k), v) for k, v in value.items()}
    return value
