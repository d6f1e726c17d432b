"""Model bundles: a folder with ``manifest.json`` and the model files it names.

The manifest is the contract between the export stage and the runtime: what the model expects
(preprocessing, input/output names and shapes), what it produces (embedding dim, metric),
which file serves which backend and precision, how it was made (provenance) and the parity
figures that admitted it. Every file carries its sha256; :func:`load_bundle` verifies all of
them before anything is loaded, so a half-copied or tampered bundle is refused with the name
of the file, never run.

The ``fingerprint`` (a hash over the file hashes, the preprocessing and the I/O contract) is
what indexes record: an index built by one bundle is refused by another. It covers every model
file of the bundle, so switching backend or precision within one bundle keeps the index (the
parity gate is what makes their embeddings interchangeable).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from edge.core.errors import BundleError, ModelMismatchError
from edge.models.preprocess import PreprocessSpec

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
Modality = Literal["image", "text"]
Precision = Literal["fp32", "int8-qdq", "int8-dynamic", "openvino-int8"]
Backend = Literal["onnxruntime", "openvino"]
PRECISIONS: tuple[str, ...] = ("fp32", "int8-qdq", "int8-dynamic", "openvino-int8")
ROLES: tuple[str, ...] = ("model", "weights", "tokenizer")


@dataclass(frozen=True, kw_only=True)
class BundleFile:
    """One file of a bundle. ``backend`` is the runtime that reads it ('' for non-model files)."""

    path: str
    sha256: str
    size: int
    role: str = "model"
    precision: str = "fp32"
    backend: str = "onnxruntime"

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "size": self.size, "role": self.role,
                "precision": self.precision, "backend": self.backend}


@dataclass(frozen=True, kw_only=True)
class TensorSpec:
    """Name and shape of a model input/output; ``-1`` or a string marks a dynamic dimension."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str = "float32"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorSpec:
        return cls(name=str(d["name"]), shape=tuple(d["shape"]), dtype=str(d.get("dtype", "float32")))


@dataclass(frozen=True, kw_only=True)
class Bundle:
    """A verified bundle (every file hash checked). Build one with :func:`load_bundle`."""

    root: Path
    name: str
    version: str
    modality: str
    embedding_dim: int
    metric: str
    inputs: tuple[TensorSpec, ...]
    output: TensorSpec
    files: tuple[BundleFile, ...]
    fingerprint: str
    preprocess: PreprocessSpec | None = None
    text: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    parity: dict[str, Any] = field(default_factory=dict)

    def model_file(self, *, backend: str, precision: str) -> BundleFile:
        """The model file a backend runs at a precision ('fp32' | 'int8').

        onnxruntime runs ``fp32`` and ``int8-qdq``/``int8-dynamic`` ONNX files; OpenVINO runs its
        own ``openvino-int8`` IR and otherwise reads the ONNX file of that precision directly.
        """
        models = [f for f in self.files if f.role == "model"]
        wanted = ["fp32"] if precision == "fp32" else (
            ["openvino-int8", "int8-qdq", "int8-dynamic"] if backend == "openvino" else ["int8-qdq", "int8-dynamic"])
        for p in wanted:
            for f in models:
                if f.precision == p and (f.backend == backend or f.backend == "onnxruntime"):
                    return f
        have = ", ".join(f"{f.path} ({f.backend}, {f.precision})" for f in models) or "none"
        raise BundleError(
            f"bundle {self.root} has no {precision} model for backend {backend}; it ships: {have}",
            hint="set model.precision / model.backend to one the bundle ships, or rebuild it with storelens export",
        )

    def path_of(self, f: BundleFile) -> Path:
        return self.root / f.path

    def to_dict(self) -> dict[str, Any]:
        return manifest_dict(
            name=self.name, version=self.version, modality=self.modality, embedding_dim=self.embedding_dim,
            metric=self.metric, inputs=self.inputs, output=self.output, files=self.files,
            preprocess=self.preprocess, text=self.text, provenance=self.provenance, parity=self.parity)


# ------------------------------------------------------------------ writing (used by export/)
def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def describe_file(root: Path, rel: str, *, role: str = "model", precision: str = "fp32",
                  backend: str = "onnxruntime") -> BundleFile:
    """Hash a file already inside the bundle folder ``root`` into a manifest entry."""
    p = root / rel
    return BundleFile(path=rel, sha256=sha256_file(p), size=p.stat().st_size, role=role, precision=precision,
                      backend=backend)


def compute_fingerprint(*, modality: str, embedding_dim: int, files: tuple[BundleFile, ...] | list[BundleFile],
                        preprocess: PreprocessSpec | None, text: dict[str, Any] | None = None) -> str:
    """Stable id of the weights + the way inputs are prepared (16 hex digits)."""
    payload = {
        "modality": modality,
        "dim": embedding_dim,
        "files": sorted((f.path, f.sha256) for f in files),
        "preprocess": preprocess.to_dict() if preprocess else None,
        "text": text or {},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def manifest_dict(*, name: str, version: str, modality: str, embedding_dim: int, metric: str,
                  inputs: tuple[TensorSpec, ...] | list[TensorSpec], output: TensorSpec,
                  files: tuple[BundleFile, ...] | list[BundleFile], preprocess: PreprocessSpec | None = None,
                  text: dict[str, Any] | None = None, provenance: dict[str, Any] | None = None,
                  parity: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest as written to disk (fingerprint computed here, never by hand)."""
    d: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "name": name,
        "version": version,
        "modality": modality,
        "embedding_dim": int(embedding_dim),
        "metric": metric,
        "fingerprint": compute_fingerprint(modality=modality, embedding_dim=embedding_dim, files=files,
                                           preprocess=preprocess, text=text),
        "inputs": [t.to_dict() for t in inputs],
        "output": output.to_dict(),
        "files": [f.to_dict() for f in files],
        "provenance": provenance or {},
        "parity": parity or {},
    }
    if preprocess is not None:
        d["preprocess"] = preprocess.to_dict()
    if text:
        d["text"] = text
    return d


def write_manifest(root: Path, manifest: dict[str, Any]) -> Path:
    path = root / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path


# ------------------------------------------------------------------ reading (runtime)
def default_bundle_path(modality: str) -> Path:
    """The bundle shipped inside the package (``edge/bundles/<modality>``)."""
    if modality not in ("image", "text"):
        raise BundleError(f"unknown bundle modality {modality!r}", hint="use 'image' or 'text'")
    return Path(__file__).resolve().parents[1] / "bundles" / modality


def load_bundle(path: str | Path, *, modality: str | None = None) -> Bundle:
    """Read and verify a bundle: manifest shape, every file present with the right sha256.

    Raises :class:`BundleError` naming the first problem (missing folder, unreadable manifest,
    missing or mismatching file, wrong modality) and what to do about it.
    """
    root = Path(path)
    mpath = root / MANIFEST_NAME
    rebuild = "rebuild it with `storelens export bundle` (or `export text`), or point the config at a good bundle"
    if not mpath.is_file():
        raise BundleError(f"no model bundle at {root} ({MANIFEST_NAME} missing)", hint=rebuild)
    try:
        m = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{mpath}: unreadable manifest ({e})", hint=rebuild) from e
    try:
        bundle = _from_manifest(root, m)
    except (KeyError, TypeError, ValueError) as e:
        raise BundleError(f"{mpath}: malformed manifest ({type(e).__name__}: {e})", hint=rebuild) from e
    if modality is not None and bundle.modality != modality:
        raise BundleError(f"{root} is a {bundle.modality} bundle, expected {modality}",
                          hint=f"point model.{modality}_bundle at a {modality} bundle")
    for f in bundle.files:
        p = root / f.path
        if not p.is_file():
            raise BundleError(f"bundle {root}: file {f.path} listed in the manifest is missing", hint=rebuild)
        digest = sha256_file(p)
        if digest != f.sha256:
            raise BundleError(
                f"bundle {root}: {f.path} does not match its manifest (sha256 {digest[:12]}…, "
                f"expected {f.sha256[:12]}…): the file was changed or partly copied", hint=rebuild)
    want = compute_fingerprint(modality=bundle.modality, embedding_dim=bundle.embedding_dim, files=bundle.files,
                               preprocess=bundle.preprocess, text=bundle.text)
    if want != bundle.fingerprint:
        raise BundleError(f"bundle {root}: manifest fingerprint {bundle.fingerprint} does not match its contents "
                          f"({want}): the manifest was edited by hand", hint=rebuild)
    return bundle


def _from_manifest(root: Path, m: dict[str, Any]) -> Bundle:
    if int(m.get("format", 0)) != FORMAT_VERSION:
        raise ValueError(f"format {m.get('format')!r}, this StoreLens reads format {FORMAT_VERSION}")
    files = tuple(
        BundleFile(path=str(f["path"]), sha256=str(f["sha256"]), size=int(f["size"]), role=str(f.get("role", "model")),
                   precision=str(f.get("precision", "fp32")), backend=str(f.get("backend", "onnxruntime")))
        for f in m["files"])
    for f in files:
        bad_precision = f.role == "model" and f.precision not in PRECISIONS
        if f.role not in ROLES or bad_precision or Path(f.path).is_absolute() or ".." in Path(f.path).parts:
            raise ValueError(f"bad file entry {f}")
    modality = str(m["modality"])
    if modality not in ("image", "text"):
        raise ValueError(f"modality {modality!r}")
    pre = PreprocessSpec.from_dict(m["preprocess"]) if modality == "image" else None
    return Bundle(root=root, name=str(m["name"]), version=str(m["version"]), modality=modality,
                  embedding_dim=int(m["embedding_dim"]), metric=str(m.get("metric", "cos")),
                  inputs=tuple(TensorSpec.from_dict(t) for t in m["inputs"]),
                  output=TensorSpec.from_dict(m["output"]), files=files, fingerprint=str(m["fingerprint"]),
                  preprocess=pre, text=dict(m.get("text", {})), provenance=dict(m.get("provenance", {})),
                  parity=dict(m.get("parity", {})))


def check_io(bundle: Bundle, model_path: Path, *, inputs: list[tuple[str, tuple[Any, ...]]],
             outputs: list[tuple[str, tuple[Any, ...]]]) -> None:
    """Compare a loaded model's I/O (name, shape) with the manifest; raise :class:`ModelMismatchError`.

    Dynamic dimensions (None, -1, '?', a symbolic name) match anything; fixed ones must be equal.
    """
    def dims_match(got: tuple[Any, ...], want: tuple[Any, ...]) -> bool:
        if len(got) != len(want):
            return False
        return all(not isinstance(g, int) or g < 0 or not isinstance(w, int) or w < 0 or g == w
                   for g, w in zip(got, want, strict=True))

    fix = "the model file and manifest come from different exports: rebuild the bundle with storelens export"
    got_in = dict(inputs)
    for spec in bundle.inputs:
        if spec.name not in got_in:
            raise ModelMismatchError(f"{model_path}: no input named {spec.name!r} (model has {sorted(got_in)})",
                                     hint=fix)
        if not dims_match(tuple(got_in[spec.name]), spec.shape):
            raise ModelMismatchError(f"{model_path}: input {spec.name!r} has shape {list(got_in[spec.name])}, "
                                     f"manifest says {list(spec.shape)}", hint=fix)
    got_out = dict(outputs)
    if bundle.output.name not in got_out:
        raise ModelMismatchError(f"{model_path}: no output named {bundle.output.name!r} (model has {sorted(got_out)})",
                                 hint=fix)
    if not dims_match(tuple(got_out[bundle.output.name]), bundle.output.shape):
        raise ModelMismatchError(f"{model_path}: output {bundle.output.name!r} has shape "
                                 f"{list(got_out[bundle.output.name])}, manifest says {list(bundle.output.shape)}",
                                 hint=fix)
