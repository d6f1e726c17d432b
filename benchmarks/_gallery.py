"""A real catalog store from a labelled split, and thresholds calibrated on the bundle's own carve.

Shared by :mod:`benchmarks.kiosk_sessions` and :mod:`benchmarks.learning`:

- :func:`build_store`: every photo of a split enrolled through the writer (SQLite + USearch i8 with
  the runtime's defaults: mean of a product's top-3 photos), one product per class (its name is the sku);
- :func:`carve`: the sessions carve the image bundle was trained with (from its manifest), i.e. photos
  of the gallery split the encoder never saw, split off with the rest as the gallery;
- :func:`calibrate_on_carve`: ``storelens calibrate``'s :func:`~edge.catalog.calibration.run_calibration`
  on a store of the gallery minus the carve, queried with the carve: the unknown-product thresholds and
  the learning hold threshold (``learn_floor``) chosen without looking at the split a benchmark reports.
"""

from __future__ import annotations

import functools
import shutil
from collections.abc import Sequence
from pathlib import Path

from benchmarks.accuracy import Item, load_split
from edge.catalog.importers.tables import ProductRecord
from edge.catalog.store import Store
from edge.core.types import Calibration
from edge.models.encoders.base import ImageEncoder
from export.data import read_classes


def class_names(root: Path) -> dict[int, str]:
    """Class id -> product name (the sku the benchmarks enroll it under)."""
    return {c.label: c.name for c in read_classes(root).values()}


def build_store(items: Sequence[Item], data_dir: Path, encoder: ImageEncoder, names: dict[int, str], *,
                threads: int = 1) -> Store:
    """A fresh store in ``data_dir`` holding every photo of ``items`` (one product per class)."""
    if data_dir.exists():
        shutil.rmtree(data_dir)
    store = Store(data_dir=data_dir, image_encoder=encoder, threads=threads)
    by: dict[int, list[Path]] = {}
    for it in items:
        by.setdefault(it.label, []).append(it.path)
    records = [ProductRecord(sku=names[lab], name=names[lab], images=tuple(paths), source="benchmark")
               for lab, paths in sorted(by.items())]
    store.import_records(records, progress=False)
    return store


def copy_store(src: Store, data_dir: Path) -> Store:
    """An independent copy of ``src``'s folder, opened with the same encoder (each benchmark pass writes its own)."""
    if data_dir.exists():
        shutil.rmtree(data_dir)
    shutil.copytree(src.data_dir, data_dir, ignore=shutil.ignore_patterns("*.tmp", "writer.lock"))
    return Store(data_dir=data_dir, image_encoder=src.image_encoder, threads=src.threads)


@functools.cache
def carve(root: Path, gallery: Path, bundle: Path) -> tuple[list[Item], list[Item]]:
    """(gallery minus the carve, the carve): the validation the bundle's training run carved from ``gallery``."""
    from benchmarks.multimodal import bundle_training
    from export.bundle import parity_split
    from export.data import read_split

    items = load_split(root, gallery)
    samples = read_split(gallery)
    keep, held = parity_split(samples, bundle_training(bundle))
    pos = {str(it.path): it for it in items}
    return [pos[str(samples[i].path)] for i in keep], [pos[str(samples[i].path)] for i in held]


def calibrate_on_carve(root: Path, gallery: Path, bundle: Path, encoder: ImageEncoder, workdir: Path,
                       names: dict[int, str], *, max_wrong: float | None = None) -> Calibration:
    """``run_calibration`` on a store of the gallery minus the carve, with the carve as the labelled photos
    (risk mode at ``max_wrong`` when given, else the acceptance mode the learning benchmarks were tuned with)."""
    from edge.catalog.calibration import run_calibration

    keep, held = carve(root, gallery, bundle)
    store = build_store(keep, workdir / "calibration", encoder, names)
    try:
        cal, _ = run_calibration(store, [(it.path, names[it.label]) for it in held], max_wrong=max_wrong,
                                 progress=False)
    finally:
        store.close()
    return cal


def bundle_dir(bundle: Path | None) -> Path:
    """The image bundle folder a benchmark runs (the embedded default when none is given)."""
    if bundle is not None:
        return bundle
    import edge

    return Path(edge.__file__).parent / "bundles" / "image"
