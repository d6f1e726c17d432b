"""Remote commands over MQTT: ``<prefix>/cmd/<verb>`` in, ``<prefix>/cmd/<verb>/reply`` out.

Every payload is checked before anything runs: size (``mqtt.command_max_bytes``), JSON
object, the shared ``token`` when ``mqtt.command_token`` is set (compared in constant time:
:func:`token_matches`), a known verb. A bad command
gets an error reply ``{"ok": false, "error": ..., "code": ...}``; a handler that raises gets
one too. Handlers run on one worker thread behind a bounded queue, never on paho's network
thread, so a slow reload or enroll cannot stall the broker link or the frame loop, and a
flood of commands is answered ``busy`` instead of piling up.

Handlers are registrable (``router.register("recommend", fn)``): ``fn(args: dict) -> dict``
returns the reply's ``result`` or raises :class:`CommandError` (or any StoreLensError).

An MQTT 5 response topic is honoured only under ``<prefix>/cmd/<verb>/reply`` (e.g.
``.../cmd/search/reply/pos-1``): anything else (the device's own ``match`` topic, another
device's) is ignored, counted in ``bad_response_topics`` and the reply goes to the
default topic — a forged command must not make the device publish on a topic of its choosing.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge.core.auth import token_matches
from edge.core.config import MqttSettings
from edge.core.errors import CommandError, StoreLensError
from edge.models.preprocess import decode_image, read_image

log = logging.getLogger("storelens.commands")

CommandHandler = Callable[[dict[str, Any]], dict[str, Any]]
Reply = Callable[[str, bytes], None]  # (topic, payload)

MAX_IMAGES = 32  # images one enroll / search command may carry
QUEUE_SIZE = 16  # commands waiting for the worker before new ones are answered "busy"
STR_MAX_CHARS = 256
LOGGED_VERBS = frozenset({"enroll", "remove", "reload", "rollback", "confirm"})  # they change the device: logged
LOGGED_KEYS = ("sku", "images", "removed", "outcome", "catalog_version")  # of their result, in the log line
_DEFAULTS = MqttSettings()


class CommandRouter:
    """Validates and dispatches commands; replies on ``<prefix>/cmd/<verb>/reply`` (or the MQTT 5 response topic)."""

    def __init__(self, *, prefix: str, reply: Reply, max_bytes: int = _DEFAULTS.command_max_bytes,
                 token: str | None = None, queue_size: int = QUEUE_SIZE) -> None:
        self.prefix = prefix.rstrip("/")
        self.max_bytes = max_bytes
        self.token = token
        self.handlers: dict[str, CommandHandler] = {}
        self.counts = {"ok": 0, "error": 0, "busy": 0}
        self.bad_response_topics = 0  # MQTT 5 response topics ignored: not under <prefix>/cmd/<verb>/reply
        self._reply = reply
        self._queue: queue.Queue[tuple[str, bytes, str | None, bytes | None] | None] = queue.Queue(queue_size)
        self._thread: threading.Thread | None = None

    @property
    def topic_filter(self) -> str:
        return f"{self.prefix}/cmd/+"

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def register(self, verb: str, handler: CommandHandler) -> None:
        self.handlers[verb] = handler

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="commands", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        if self._thread:
            try:
                self._queue.put_nowait(None)
            except queue.Full:
                pass
            self._thread.join(timeout)

    def on_message(self, topic: str, payload: bytes, properties: Any = None) -> None:
        """paho network-thread entry: cheap checks, then queue for the worker."""
        verb = topic.rsplit("/", 1)[-1]
        resp_topic = getattr(properties, "ResponseTopic", None) if properties is not None else None
        corr = getattr(properties, "CorrelationData", None) if properties is not None else None
        if resp_topic is not None and not self._own_reply_topic(verb, resp_topic):
            self.bad_response_topics += 1
            log.warning("command's response topic ignored: not under this device's reply topic",
                        extra={"verb": verb[:64], "response_topic": resp_topic[:200]})
            resp_topic = None
        if len(payload) > self.max_bytes:
            self._send(verb, self._error(verb, None, CommandError(
                f"command payload of {len(payload)} bytes exceeds mqtt.command_max_bytes={self.max_bytes}",
                hint="send fewer/smaller images or an image path inside mqtt.enroll_dir")), resp_topic, corr)
            return
        try:
            self._queue.put_nowait((verb, payload, resp_topic, corr))
        except queue.Full:
            self.counts["busy"] += 1
            self._send(verb, {"ok": False, "error": "busy: too many commands queued; retry later", "code": "busy"},
                       resp_topic, corr)

    def handle(self, verb: str, payload: bytes) -> dict[str, Any]:
        """Validate and run one command; always returns a reply object (never raises)."""
        req_id: Any = None
        try:
            args = self._parse(payload)
            req_id = args.pop("id", None)
            self._authorise(args.pop("token", None))
            handler = self.handlers.get(verb)
            if handler is None:
                raise CommandError(f"unknown command {verb!r}", hint=f"use one of {sorted(self.handlers)}")
            result = handler(args)
        except StoreLensError as e:
            return self._error(verb, req_id, e)
        except Exception as e:  # the device failed, not the request: code "internal" (a kiosk answers 500)
            log.exception("command handler failed", extra={"verb": verb, "id": req_id})
            reply = self._error(verb, req_id, CommandError(
                f"{verb} failed: {type(e).__name__}: {e}",
                hint="a failure on the device, not in the request: retry; if it persists, see the runtime's log"))
            return {**reply, "code": "internal"}
        self.counts["ok"] += 1
        # what changed the device is logged (who enrolled what, when); searches and snapshots only at DEBUG
        log.log(logging.INFO if verb in LOGGED_VERBS else logging.DEBUG, "command done",
                extra={"verb": verb, "id": req_id, **{k: result[k] for k in LOGGED_KEYS if k in result}})
        return {"id": req_id, "ok": True, "result": result}

    # -- internals ---------------------------------------------------------------------------------

    def _own_reply_topic(self, verb: str, topic: str) -> bool:
        """``<prefix>/cmd/<verb>/reply`` or a topic below it, without wildcards."""
        base = f"{self.prefix}/cmd/{verb}/reply"
        return (topic == base or topic.startswith(base + "/")) and not any(c in topic for c in "+#\0")

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            verb, payload, resp_topic, corr = item
            self._send(verb, self.handle(verb, payload), resp_topic, corr)

    def _send(self, verb: str, reply: dict[str, Any], resp_topic: str | None, corr: bytes | None) -> None:
        if corr is not None:
            reply = {**reply, "correlation": corr.decode("utf-8", "replace")}
        body = json.dumps(reply, separators=(",", ":"), default=str).encode()
        try:
            self._reply(resp_topic or f"{self.prefix}/cmd/{verb}/reply", body)
        except Exception:
            log.exception("could not send a command reply", extra={"verb": verb})

    def _error(self, verb: str, req_id: Any, e: StoreLensError) -> dict[str, Any]:
        self.counts["error"] += 1
        log.warning("command refused", extra={"verb": verb, "id": req_id, "error": str(e)})
        return {"id": req_id, "ok": False, "error": str(e), "code": type(e).__name__}

    @staticmethod
    def _parse(payload: bytes) -> dict[str, Any]:
        try:
            args = json.loads(payload.decode("utf-8")) if payload.strip() else {}
        except (UnicodeDecodeError, ValueError) as e:
            raise CommandError(f"command payload is not valid UTF-8 JSON: {e}",
                               hint='send a JSON object, e.g. {"id": "1", ...}') from e
        if not isinstance(args, dict):
            raise CommandError(f"command payload must be a JSON object, got {type(args).__name__}",
                               hint='send a JSON object, e.g. {"id": "1", ...}')
        return args

    def _authorise(self, token: Any) -> None:
        if self.token is not None and not token_matches(token, self.token):
            raise CommandError("unauthorised: missing or wrong token",
                               hint="send the device's mqtt.command_token as \"token\"")


# -- argument helpers shared by the built-in handlers -----------------------------------------------

def reject_unknown_keys(args: dict[str, Any], allowed: Sequence[str], *, verb: str) -> None:
    """Refuse arguments a command does not know (a typo must not be silently ignored)."""
    unknown = set(args) - set(allowed)
    if unknown:
        raise CommandError(f"{verb} command has unknown keys {sorted(unknown)}", hint=f"use {', '.join(allowed)}")


def optional_int(args: dict[str, Any], key: str, default: int, lo: int | None = None, hi: int | None = None) -> int:
    """``args[key]`` as an int within ``lo..hi`` (either bound optional), or ``default`` when absent."""
    v = args.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or (lo is not None and v < lo) or (hi is not None and v > hi):
        span = f" in {lo}..{hi}" if lo is not None and hi is not None else ""
        raise CommandError(f"{key!r} must be an integer{span}, got {v!r:.60}", hint=f'e.g. "{key}": {default}')
    return v


def require_str(args: dict[str, Any], key: str, *, max_len: int = STR_MAX_CHARS) -> str:
    v = args.get(key)
    if not isinstance(v, str) or not v.strip() or len(v) > max_len:
        raise CommandError(f"{key!r} must be a non-empty string of at most {max_len} characters, got {v!r:.60}",
                           hint=f"add \"{key}\": \"...\" to the command")
    return v


def load_images(specs: Any, *, allowed_dir: Path | None) -> list[np.ndarray]:
    """Images from ``[{"b64": "..."} | {"path": "..."}]``; paths must resolve inside ``allowed_dir``."""
    if not isinstance(specs, list) or not specs or len(specs) > MAX_IMAGES:
        raise CommandError(f"'images' must be a list of 1..{MAX_IMAGES} items",
                           hint='e.g. "images": [{"b64": "<base64 JPEG>"}] or [{"path": "shots/a.jpg"}]')
    out = []
    for i, spec in enumerate(specs):
        if isinstance(spec, dict) and isinstance(spec.get("b64"), str):
            try:
                data = base64.b64decode(spec["b64"], validate=True)
            except (binascii.Error, ValueError) as e:
                raise CommandError(f"images[{i}].b64 is not valid base64: {e}") from e
            out.append(decode_image(data, source=f"images[{i}]"))
        elif isinstance(spec, dict) and isinstance(spec.get("path"), str):
            out.append(read_image(safe_path(spec["path"], allowed_dir)))
        else:
            raise CommandError(f"images[{i}] must be {{\"b64\": ...}} or {{\"path\": ...}}")
    return out


def safe_path(path: str, allowed_dir: Path | None) -> Path:
    """Resolve ``path`` (relative to ``allowed_dir``) and refuse anything outside it (.., symlinks, absolute)."""
    if allowed_dir is None:
        raise CommandError("image paths are not allowed: mqtt.enroll_dir is not set",
                           hint="send images as base64, or set mqtt.enroll_dir on the device")
    root = allowed_dir.resolve()
    p = (root / path).resolve()
    if not p.is_relative_to(root):
        raise CommandError(f"path {path!r} is outside the allowed folder", hint=f"use a path inside {root}")
    return p
