"""USearch vector indexes, one per modality, with a JSON sidecar and atomic generation swaps.

Layout in a catalog's data folder, for a modality ``image``::

    image.index.json                 sidecar: ndim, dtype, metric, encoder fingerprint, ... and
                                     the name of the current data file (the "pointer")
    image.<generation>.usearch       the USearch graph + vectors of that generation

Why a pointer sidecar: a writer saves a complete new data file under a new name, then
replaces the sidecar with ``os.replace`` (atomic on POSIX). A reader reads the sidecar once and
opens the file it names, so it always sees one whole generation, never a half-written file and
never the sidecar of one generation with the vectors of another. The previous generation is
kept on disk so that a reader that read the old sidecar a moment ago can still open its file;
older ones are pruned (an already memory-mapped file stays readable after unlink on Linux).

``multi=True``: a product key holds several reference vectors (one per photo); searches
return vector hits that :mod:`edge.catalog.ranking` aggregates per product.

int8 storage: USearch's own f32->i8 cast truncates ``x * 127`` of the unit vector, which
wastes most of the 8 bits on unit vectors of a few hundred dimensions (their components are
small) and costs recall. We quantize ourselves instead: scale by ``i8_scale`` (so that a high
quantile of |component| maps to 127), round, clip, and hand USearch int8 arrays. Cosine is
scale-invariant, so scores stay cosines of the (finer) quantized vectors.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

# Import-order workaround, measured here with usearch 2.26 + onnxruntime 1.32: importing
# onnxruntime *after* usearch's compiled module segfaults the process (in onnxruntime's
# pybind init), while the other order works. Every process that indexes also embeds, so load
# onnxruntime first whenever it is installed.
with contextlib.suppress(ImportError):
    import onnxruntime  # noqa: F401

from usearch.index import Index

from edge.catalog.ranking import Hits
from edge.core.config import CatalogSettings
from edge.core.errors import CatalogError, IndexMismatchError

Dtype = Literal["f32", "f16", "i8"]
DTYPES: tuple[str, ...] = ("f32", "f16", "i8")
FORMAT_VERSION = 1
# Fraction of |component| values left unclipped when choosing the i8 scale (see module doc).
I8_QUANTILE = 0.9999
# HNSW graph parameters; the search breadth is a setting (catalog.expansion_search). Not USearch's defaults
# (16, 128): at 1M clustered 256-d i8 vectors, 20/256 reaches recall@10 0.96 at breadth 48-64 where 16/128
# needs 128, for 32 more bytes a vector and a slower build (docs/decisions.md, 2026-12-02 session 8).
DEFAULT_CONNECTIVITY = 20
DEFAULT_EXPANSION_ADD = 256
DEFAULT_EXPANSION_SEARCH: int = CatalogSettings.model_fields["expansion_search"].default


@dataclass(frozen=True, kw_only=True)
class IndexMeta:
    """What the sidecar records about one generation of an index."""

    modality: str
    ndim: int
    dtype: str
    fingerprint: str
    catalog_version: int
    vectors: int
    products: int
    file: str
    metric: str = "cos"
    i8_scale: float = 1.0
    connectivity: int = DEFAULT_CONNECTIVITY
    expansion_add: int = DEFAULT_EXPANSION_ADD
    expansion_search: int = DEFAULT_EXPANSION_SEARCH
    created_utc: str = ""
    format: int = FORMAT_VERSION
    file_bytes: int = 0  # size of the data file (0: a sidecar from before sizes were recorded)
    file_crc32: str = ""  # its CRC-32 ("" likewise): a corrupt file is refused, not searched

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IndexMeta:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


def sidecar_path(directory: Path, modality: str) -> Path:
    return directory / f"{modality}.index.json"


def choose_i8_scale(vectors: np.ndarray) -> float:
    """Scale that maps the :data:`I8_QUANTILE` quantile of |component| to 1.0 (then x127 -> int8)."""
    if len(vectors) == 0:
        return 1.0
    sample = np.abs(_unit(vectors[: 100_000]))
    q = float(np.quantile(sample, I8_QUANTILE))
    return 1.0 / q if q > 0 else 1.0


def quantize(vectors: np.ndarray, *, dtype: str, i8_scale: float = 1.0) -> np.ndarray:
    """float32 unit vectors -> the array handed to USearch for ``dtype`` (own rounding for i8)."""
    v = _unit(np.asarray(vectors, dtype=np.float32))
    if dtype == "i8":
        return np.clip(np.rint(v * (i8_scale * 127.0)), -127, 127).astype(np.int8)
    if dtype == "f16":
        return v.astype(np.float16)
    return v


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.atleast_2d(np.asarray(v, dtype=np.float32))
    n = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.where(n > 0, n, 1.0)


def new_usearch(meta: IndexMeta) -> Index:
    return Index(ndim=meta.ndim, metric="cos", dtype=meta.dtype, multi=True, connectivity=meta.connectivity,
                 expansion_add=meta.expansion_add, expansion_search=meta.expansion_search)


class VectorIndex:
    """One opened generation of a modality index (read side). Thread-safe for concurrent searches."""

    def __init__(self, *, index: Index, meta: IndexMeta, path: Path) -> None:
        self._index = index
        self.meta = meta
        self.path = path

    @property
    def size(self) -> int:
        """Number of vectors (several per product)."""
        return len(self._index)

    @classmethod
    def open(cls, directory: Path, modality: str, *, fingerprint: str, ndim: int, dtype: str,
             view: bool = False) -> VectorIndex | None:
        """Open the current generation, or ``None`` when no index was built yet.

        Raises :class:`IndexMismatchError` when the index was built by another encoder, another
        dimension or another dtype than the caller uses: silently mixing them gives wrong matches.
        """
        for attempt in range(5):
            meta = read_meta(directory, modality)
            if meta is None:
                return None
            check_compatible(meta, fingerprint=fingerprint, ndim=ndim, dtype=dtype, where=directory)
            path = directory / meta.file
            try:
                return cls(index=_load(path, meta, view=view), meta=meta, path=path)
            except FileNotFoundError:
                # A writer pruned the generation between our sidecar read and the open: re-read.
                time.sleep(0.01 * (attempt + 1))
        raise CatalogError(f"{modality} index in {directory} keeps changing under the reader",
                           hint="retry; if it persists, another process is rewriting the index in a loop")

    def vectors_per_key(self, keys: np.ndarray) -> dict[int, int]:
        """How many vectors each product key holds (multi=True)."""
        uniq = np.unique(np.asarray(keys, dtype=np.uint64))
        if len(uniq) == 0:
            return {}
        counts = np.atleast_1d(np.asarray(self._index.count(uniq)))
        return {int(k): int(c) for k, c in zip(uniq.tolist(), counts.tolist(), strict=True)}

    def search(self, vectors: np.ndarray, k: int, *, threads: int = 1, exact: bool = False) -> Hits:
        """Top-``k`` vector hits per query (k clamped to the index size); scores are cosines."""
        q = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        n = len(q)
        k = max(0, min(int(k), self.size))
        if n == 0 or k == 0:
            return Hits(np.zeros((n, 0), np.uint64), np.zeros((n, 0), np.float32), np.zeros(n, np.int64))
        if q.shape[1] != self.meta.ndim:
            raise IndexMismatchError(f"query vectors have dim {q.shape[1]}, the {self.meta.modality} index has "
                                     f"{self.meta.ndim}", hint="use the encoder the index was built with")
        m = self._index.search(quantize(q, dtype=self.meta.dtype, i8_scale=self.meta.i8_scale), k,
                               threads=threads, exact=exact)
        keys = np.atleast_2d(np.asarray(m.keys))
        dist = np.atleast_2d(np.asarray(m.distances, dtype=np.float32))
        # A one-row batch comes back as a single `Matches` (no `counts`): every column is valid.
        counts = np.atleast_1d(np.asarray(getattr(m, "counts", keys.shape[1]), dtype=np.int64))
        return Hits(keys, 1.0 - dist, counts)


def open_for_write(directory: Path, modality: str) -> tuple[IndexMeta, Index] | None:
    """The current generation loaded into a private in-memory copy. Call under :func:`writer_lock`."""
    meta = read_meta(directory, modality)
    return None if meta is None else (meta, _load(directory / meta.file, meta, view=False))


def _load(path: Path, meta: IndexMeta, *, view: bool) -> Index:
    if not path.is_file():
        raise FileNotFoundError(path)
    _verify(path, meta)
    index = new_usearch(meta)
    try:
        index.view(str(path)) if view else index.load(str(path))
    except (RuntimeError, ValueError) as e:
        if not path.is_file():
            raise FileNotFoundError(path) from e
        raise CatalogError(f"index file {path} is unreadable: {e}",
                           hint="rebuild it with `storelens catalog reindex`") from e
    index.expansion_search = meta.expansion_search  # type: ignore[misc]  # has a setter; stubs miss it
    return index


def file_crc32(path: Path) -> str:
    crc = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            crc = zlib.crc32(chunk, crc)
    return f"{crc:08x}"


def _verify(path: Path, meta: IndexMeta) -> None:
    """Refuse a data file whose size or CRC-32 differs from what its sidecar recorded (a torn or corrupt file)."""
    if meta.file_bytes and path.stat().st_size != meta.file_bytes:
        raise CatalogError(f"index file {path} has {path.stat().st_size} bytes, its sidecar recorded "
                           f"{meta.file_bytes}", hint="rebuild it with `storelens catalog reindex`")
    if meta.file_crc32 and file_crc32(path) != meta.file_crc32:
        raise CatalogError(f"index file {path} is corrupt: its CRC-32 differs from the one its sidecar recorded",
                           hint="rebuild it with `storelens catalog reindex`")


def read_meta(directory: Path, modality: str) -> IndexMeta | None:
    path = sidecar_path(directory, modality)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError) as e:
        raise CatalogError(f"index sidecar {path} is not valid JSON: {e}",
                           hint="rebuild it with `storelens catalog reindex`") from e
    try:
        meta = IndexMeta.from_dict(data)
        if not isinstance(meta.file, str) or not meta.file or "/" in meta.file:
            raise TypeError(f"file {meta.file!r} is not a data file name")
        int(meta.ndim), int(meta.catalog_version), int(meta.vectors), int(meta.products)
    except (TypeError, ValueError, AttributeError) as e:
        raise CatalogError(f"index sidecar {path} is damaged: {e}",
                           hint="rebuild it with `storelens catalog reindex`") from e
    return meta


def check_compatible(meta: IndexMeta, *, fingerprint: str, ndim: int, dtype: str, where: Path) -> None:
    problems = []
    if meta.fingerprint != fingerprint:
        problems.append(f"encoder fingerprint {meta.fingerprint!r} != {fingerprint!r}")
    if meta.ndim != ndim:
        problems.append(f"dimension {meta.ndim} != {ndim}")
    if meta.dtype != dtype:
        problems.append(f"dtype {meta.dtype} != {dtype}")
    if problems:
        raise IndexMismatchError(
            f"the {meta.modality} index in {where} was built differently: " + "; ".join(problems),
            hint="rebuild it for the current encoder and dtype with `storelens catalog reindex` "
                 "(or point model/catalog settings back at the ones it was built with)")


def publish(directory: Path, index: Index, meta: IndexMeta) -> IndexMeta:
    """Save ``index`` as a new generation and atomically make it current. Call under :func:`writer_lock`."""
    directory.mkdir(parents=True, exist_ok=True)
    try:
        old = read_meta(directory, meta.modality)
    except CatalogError:  # a damaged sidecar is being replaced: nothing of it to keep
        old = None
    gen = f"{meta.modality}.{time.time_ns():x}.usearch"
    data_path = directory / gen
    tmp = directory / (gen + ".tmp")
    try:
        index.save(str(tmp))
        _fsync(tmp)
        os.replace(tmp, data_path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk: leave no partial generation taking space
        raise
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    meta = IndexMeta.from_dict({**meta.to_dict(), "file": gen, "created_utc": created, "vectors": len(index),
                                "file_bytes": data_path.stat().st_size, "file_crc32": file_crc32(data_path)})
    _write_sidecar(directory, meta)
    _prune(directory, meta.modality, keep={gen, old.file if old else gen})
    return meta


def _write_sidecar(directory: Path, meta: IndexMeta) -> None:
    side = sidecar_path(directory, meta.modality)
    side_tmp = side.with_suffix(".json.tmp")
    side_tmp.write_text(json.dumps(meta.to_dict(), indent=2), encoding="utf-8")
    _fsync(side_tmp)
    os.replace(side_tmp, side)
    _fsync_dir(directory)


def restamp(directory: Path, catalog_version: int) -> None:
    """Record that every current index also reflects ``catalog_version`` (a write that changed no vector,
    e.g. a product's extra text). Call under :func:`writer_lock`, after the write committed."""
    for side in sorted(directory.glob("*.index.json")):
        meta = read_meta(directory, side.name.removesuffix(".index.json"))
        if meta is not None and meta.catalog_version != catalog_version:
            _write_sidecar(directory, IndexMeta.from_dict({**meta.to_dict(), "catalog_version": catalog_version}))


def _prune(directory: Path, modality: str, keep: set[str]) -> None:
    for p in directory.glob(f"{modality}.*.usearch"):
        if p.name not in keep:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        _fsync(path)


@contextlib.contextmanager
def writer_lock(directory: Path, *, timeout_s: float = 60.0) -> Iterator[None]:
    """Hold the catalog's single-writer lock (``.writer.lock``, flock) so concurrent writers queue up.

    Works across processes and across threads of one process (each call opens its own file).
    """
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / ".writer.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise CatalogError(f"another writer has held {directory}/.writer.lock for over {timeout_s:.0f}s",
                                       hint="wait for the running import/enroll to finish, then retry") from None
                time.sleep(0.02)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
