"""``python -m tests.catalog_chaos DATA ONNX SKU MARKER``: a catalog writer that stops between commit and publish.

It enrolls ``SKU`` into the catalog in ``DATA`` with the tiny ONNX encoder. When the SQLite
transaction has committed and the writer is about to publish the next index generation, it
creates ``MARKER`` and waits, so a test can SIGKILL it exactly there (the crash that leaves the
index behind the catalog).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from edge.catalog import index as ix
from edge.catalog.store import Store
from tests.runtime_helpers import TinyOnnxEncoder, product_image


def main(argv: list[str]) -> int:
    data, onnx, sku, marker = Path(argv[0]), Path(argv[1]), argv[2], Path(argv[3])

    def stop_before_publish(*_a: Any, **_kw: Any) -> Any:
        marker.write_text("committed")
        time.sleep(600)  # the test kills this process here

    store = Store(data_dir=data, image_encoder=TinyOnnxEncoder(onnx), dtype="f32")
    ix.publish = stop_before_publish  # type: ignore[assignment]
    store.enroll(sku, name=sku.title(), images=[product_image(sku), product_image(sku, shift=6)])
    return 1  # never reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
