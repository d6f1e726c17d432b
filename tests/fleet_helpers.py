"""Small real inputs for the chain-scale tests: a product table of Grocery Store photos, an HTTP file server.

The table holds a few GSD products with a few train photos each (absolute paths), one product
with an unreadable photo and a missing one besides its good photos, and one product whose only
photo is unreadable. The HTTP server is the stdlib's, serving one folder on 127.0.0.1. Snapshots are signed with
:data:`TEST_KEY`, a key made for this test session; devices trust :data:`TEST_PUBLIC`.
"""

from __future__ import annotations

import csv
import functools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.fleet.signing import public_key_text
from tests.conftest import shared_dir

BAD_SKU = "ONLY-BAD"
TEST_KEY = Ed25519PrivateKey.generate()  # the chain's signing key in these tests (devices trust TEST_PUBLIC)
TEST_PUBLIC = public_key_text(TEST_KEY.public_key())


def gsd_photos(per_class: int, classes: int, *, offset: int = 0) -> dict[str, list[Path]]:
    """``classes`` GSD classes (from ``offset``) -> their first ``per_class`` train photos."""
    root = shared_dir() / "datasets" / "grocery-store"
    by: dict[str, list[Path]] = {}
    for line in (root / "train.txt").read_text().splitlines():
        rel = line.split(",")[0].strip()
        by.setdefault(rel.split("/")[-2], []).append(root / rel)
    chosen = list(by)[offset : offset + classes]
    return {c: by[c][:per_class] for c in chosen}


def write_table(folder: Path, *, classes: int = 5, per_class: int = 3, offset: int = 0,
                broken: bool = True) -> Path:
    """A CSV product table of GSD photos (see the module docstring); returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    bad = folder / "bad.jpg"
    bad.write_bytes(b"this is not a JPEG")
    table = folder / "products.csv"
    with table.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["sku", "name", "description", "images"])
        for i, (cls, photos) in enumerate(gsd_photos(per_class, classes, offset=offset).items()):
            extra = [bad, folder / "missing.jpg"] if broken and i == 0 else []
            w.writerow([cls, cls.replace("-", " "), f"fresh {cls.lower()}", ";".join(str(p) for p in photos + extra)])
        if broken:
            w.writerow([BAD_SKU, "Only a bad photo", "", str(bad)])
    return table


class _Quiet(SimpleHTTPRequestHandler):
    """GET serves the folder; PUT /<name> writes a file into it (what `catalog publish --to http://...` does)."""

    requests: list[str] | None = None  # set per server: every request's method and path

    def log_message(self, format: str, *args: object) -> None:
        pass

    def parse_request(self) -> bool:
        ok = super().parse_request()
        if ok and self.requests is not None:
            self.requests.append(f"{self.command} {self.path}")
        return ok

    def do_PUT(self) -> None:
        name = self.path.strip("/")
        if not name or "/" in name or name.startswith("."):
            self.send_error(400, "one file name, please")
            return
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        (Path(self.directory) / name).write_bytes(body)
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()


@contextmanager
def http_server(folder: Path, requests: list[str] | None = None) -> Iterator[str]:
    """Serve ``folder`` over HTTP on 127.0.0.1 (a free port; GET and PUT); yields the base URL. Every request
    is appended to ``requests`` when given."""
    handler = type("Logged", (_Quiet,), {"requests": requests})
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
