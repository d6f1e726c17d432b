"""``storelens catalog publish``: a snapshot packed, put where devices fetch it, and announced (retained, QoS 1).

Destinations: a folder (local or a mount the devices share; the archive is written beside
and renamed in), or an ``http(s)://`` URL that accepts ``PUT`` (object storage, WebDAV). The
announcement names where devices *download* it (``--url``, by default the destination). With a
signing key (``--key``, :mod:`edge.fleet.signing`) the announcement is signed; devices install
only announcements signed by a key in their ``fleet.trusted_keys``.
"""

from __future__ import annotations

import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from edge.catalog.snapshot import MANIFEST, SnapshotError, pack, sha256_file, verify
from edge.core.config import MqttSettings
from edge.core.errors import CommandError
from edge.fleet.fetch import Announcement, announce_topic, copy_into

CONNECT_TIMEOUT_S = 10.0


def publish_snapshot(folder: Path, *, to: str, url: str | None = None, timeout_s: float = 600.0,
                     key: Ed25519PrivateKey | None = None) -> Announcement:
    """Verify the snapshot, pack it as ``<id>.tar``, put it at ``to``; the announcement for it (signed with
    ``key`` when given)."""
    m = verify(folder)
    archive = folder.parent / f"{m.id}.tar"
    sha256, size = pack(folder, archive)
    try:
        if urlsplit(to).scheme in ("http", "https"):
            dest_url = f"{to.rstrip('/')}/{archive.name}"
            _http_put(archive, dest_url, timeout_s=timeout_s)
        else:
            dest = Path(urlsplit(to).path if to.startswith("file://") else to)
            dest_url = copy_into(archive, dest).resolve().as_uri()
    finally:
        archive.unlink(missing_ok=True)
    a = Announcement(version=m.catalog_version, snapshot=m.id, url=url or dest_url, sha256=sha256, size=size,
                     bundle=m.bundle, text_bundle=m.text_bundle, dtype=m.dtype,
                     manifest_sha256=sha256_file(folder / MANIFEST))
    return a if key is None else a.signed(key)


def _http_put(path: Path, url: str, *, timeout_s: float) -> None:
    with path.open("rb") as f:
        req = urllib.request.Request(url, data=f, method="PUT", headers={
            "Content-Length": str(path.stat().st_size), "Content-Type": "application/x-tar"})
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                if resp.status >= 300:
                    raise SnapshotError(f"upload to {url} answered HTTP {resp.status}", hint="check the server")
        except (urllib.error.URLError, OSError) as e:
            raise SnapshotError(f"cannot upload the snapshot to {url}: {e}",
                                hint="the URL must accept HTTP PUT; or publish to a folder the server serves") from e


def mqtt_client(settings: MqttSettings, client_id: str) -> paho.Client:
    """A plain paho client with the config's broker credentials and TLS (for the CLI's short sessions)."""
    v5 = settings.protocol == "5"
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311)
    if settings.username:
        client.username_pw_set(settings.username,
                               settings.password.get_secret_value() if settings.password else None)
    if settings.tls.enabled:
        t = settings.tls
        client.tls_set(ca_certs=str(t.ca_file) if t.ca_file else None,
                       certfile=str(t.cert_file) if t.cert_file else None,
                       keyfile=str(t.key_file) if t.key_file else None, cert_reqs=ssl.CERT_REQUIRED)
        client.tls_insecure_set(t.insecure)
    return client


def connect(client: paho.Client, settings: MqttSettings) -> None:
    try:
        client.connect(settings.host, settings.port, keepalive=settings.keepalive_s)
    except OSError as e:
        raise CommandError(f"cannot reach the broker at {settings.host}:{settings.port}: {e}",
                           hint="check [mqtt] host/port (or --broker)") from e
    client.loop_start()
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    while not client.is_connected():
        if time.monotonic() > deadline:
            client.loop_stop()
            raise CommandError(f"the broker at {settings.host}:{settings.port} did not accept the connection",
                               hint="check [mqtt] username/password/tls")
        time.sleep(0.02)


def announce(a: Announcement, *, stores: Sequence[str], settings: MqttSettings) -> list[str]:
    """Publish the retained announcement (QoS 1) on each store's topic; returns the topics."""
    client = mqtt_client(settings, client_id=f"storelens-publish-{time.time_ns():x}")
    connect(client, settings)
    topics = [announce_topic(s) for s in stores]
    try:
        infos = [client.publish(t, a.to_payload(), qos=1, retain=True) for t in topics]
        for info in infos:
            info.wait_for_publish(CONNECT_TIMEOUT_S)
    finally:
        client.disconnect()
        client.loop_stop()
    return topics
