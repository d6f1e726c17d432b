"""Build the image bundle: checkpoint -> fp32 ONNX -> int8 QDQ + OpenVINO int8 -> parity gate -> bundle.

Everything is written into a temporary folder beside the destination and only renamed into
place once the parity gate has passed (or ``force`` recorded the failure), so a failed export
(parity, an exception, Ctrl-C) never replaces the last good bundle.

Learned whitening (export/whiten.py) is fitted on the parity gallery and, by default, kept
when it raises the parity queries' recall; it is part of the fp32 graph that is quantized.

Images: the parity queries are the training run's own carved validation (images the model
never trained on, reproduced from the recipe's seed), the parity gallery and the calibration
images are the rest of the catalog split. The val split is never touched here.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import platform
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.core.errors import InputError
from edge.models.bundle import (
    Bundle,
    TensorSpec,
    describe_file,
    load_bundle,
    manifest_dict,
    sha256_file,
    write_manifest,
)
from edge.models.encoders.onnx import l2_normalise, open_session
from edge.models.encoders.openvino import compile_model
from edge.models.preprocess import PreprocessSpec
from export.data import Sample
from export.onnx import INPUT_NAME, OUTPUT_NAME, export_onnx, load_checkpoint
from export.openvino import quantize_openvino
from export.parity import MAX_R1_DROP, MIN_COSINE, ParityReport, compare, gate
from export.quantize import ImageSet, fp32_nodes, load_image_set, quantize_qdq
from export.whiten import DEFAULT_SHRINKAGE, choose_whitening

log = logging.getLogger("storelens.export")

FP32_FILE = "image-fp32.onnx"
INT8_FILE = "image-int8.onnx"
OV_FILE = "image-int8-openvino.xml"


@dataclass(frozen=True, kw_only=True)
class BuildResult:
    """What an export produced: the installed bundle and the figures that admitted it."""

    bundle: Bundle
    reports: tuple[ParityReport, ...]
    candidates: tuple[ParityReport, ...]
    skipped: tuple[tuple[str, str], ...]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.reports)


def tool_versions() -> dict[str, str]:
    import nncf
    import onnx
    import onnxruntime
    import openvino
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "openvino": openvino.__version__, "nncf": nncf.__version__,
            "numpy": np.__version__}


def data_digest(samples: Sequence[Sample]) -> str:
    """Hash of (path, label, size) of every catalog image: which data the bundle was calibrated/gated on."""
    h = hashlib.sha256()
    for s in sorted(samples, key=lambda s: str(s.path)):
        size = s.path.stat().st_size if s.path.is_file() else -1
        rel = "/".join(s.path.parts[-3:])  # machine-independent: product folder + file name
        h.update(f"{rel}:{s.label}:{size}\n".encode())
    return h.hexdigest()[:16]


def parity_split(samples: Sequence[Sample], report: dict[str, Any], *, per_class: int | None = None,
                 seed: int | None = None) -> tuple[list[int], list[int]]:
    """(gallery, queries) indices: the queries are the carved validation of the training run.

    Reproduces export.train's carve (same mode, seed and sizes from the checkpoint's report), so
    the parity queries are images the encoder never trained on. ``per_class`` forces a random
    carve of that many photos a product.
    """
    from export.train import TrainConfig, carve

    cfg = dict(report.get("config", {}))
    known = {k: v for k, v in cfg.items() if k in TrainConfig.__dataclass_fields__}
    known.setdefault("carve", "random")  # runs from before the sessions carve
    if per_class is not None:
        known.update(carve="random", carve_per_class=per_class)
    rng = np.random.default_rng(int(seed if seed is not None else cfg.get("seed", 0)))
    n_hold = int(cfg.get("holdout_classes", 0))
    if n_hold:  # train.py draws the held-out products from the same generator first
        rng.choice(sorted({s.label for s in samples}), n_hold, replace=False)
    return carve(list(samples), TrainConfig(**known), rng)


def pick_calibration(samples: Sequence[Sample], indices: Sequence[int], count: int, seed: int) -> list[int]:
    """Up to ``count`` indices spread evenly over the products (round robin, shuffled within each)."""
    rng = np.random.default_rng(seed)
    by: dict[int, list[int]] = {}
    for i in indices:
        by.setdefault(samples[i].label, []).append(i)
    pools = [list(rng.permutation(v)) for _, v in sorted(by.items())]
    out: list[int] = []
    while len(out) < count and any(pools):
        for pool in pools:
            if pool and len(out) < count:
                out.append(int(pool.pop()))
    return sorted(out)


def embed_onnx(path: Path, x: np.ndarray, threads: int, batch: int = 64) -> np.ndarray:
    sess = open_session(path, threads)
    outs = [sess.run([OUTPUT_NAME], {INPUT_NAME: x[i : i + batch]})[0] for i in range(0, len(x), batch)]
    return l2_normalise(np.concatenate(outs).astype(np.float32))


def embed_openvino(path: Path, x: np.ndarray, threads: int, batch: int = 64) -> np.ndarray:
    compiled = compile_model(path, threads)
    req, port = compiled.create_infer_request(), compiled.output(OUTPUT_NAME)
    outs = [np.array(req.infer({INPUT_NAME: x[i : i + batch]})[port]) for i in range(0, len(x), batch)]
    return l2_normalise(np.concatenate(outs).astype(np.float32))


def build_image_bundle(*, checkpoint: Path, samples: Sequence[Sample], out: Path, calib_images: int = 300,
                       parity_per_class: int | None = None, seed: int | None = None, input_size: int | None = None,
                       min_cosine: float = MIN_COSINE, max_r1_drop: float = MAX_R1_DROP, force: bool = False,
                       threads: int | None = None, name: str = "storelens-image", version: str | None = None,
                       openvino_preset: str = "performance", data_source: str = "",
                       whitening: str = "auto", whitening_shrinkage: float = DEFAULT_SHRINKAGE,
                       progress: bool = True) -> BuildResult:
    """Export, quantize, gate and install an image bundle at ``out`` (atomically)."""
    if not samples:
        raise InputError("the catalog is empty", hint="pass a split file or folder with product images")
    ck = load_checkpoint(checkpoint, input_size=input_size)
    spec, dim = ck.spec, ck.model.arch.embedding_dim
    threads = threads or os.cpu_count() or 1
    gal_idx, q_idx = parity_split(samples, ck.report, per_class=parity_per_class, seed=seed)
    if not q_idx:
        raise InputError("no held-out parity images: the training run carved none, or products have too few photos",
                         hint="train with --carve sessions (or random), or pass --parity-per-class N to carve N "
                         "photos a product here (then the encoder has seen them in training)")
    calib_idx = pick_calibration(samples, gal_idx, calib_images, seed=int(seed or 0))
    gallery = load_image_set([samples[i].path for i in gal_idx], [samples[i].label for i in gal_idx], spec,
                             desc="parity gallery", progress=progress)
    queries = load_image_set([samples[i].path for i in q_idx], [samples[i].label for i in q_idx], spec,
                             desc="parity queries", progress=progress)
    gal_pos = {p: j for j, p in enumerate(gallery.paths)}
    calib = gallery.x[[gal_pos[str(samples[i].path)] for i in calib_idx if str(samples[i].path) in gal_pos]]
    skipped = gallery.skipped + queries.skipped
    log.info("parity: %d queries, %d gallery images; calibration: %d images; skipped %d unreadable",
             len(queries.x), len(gallery.x), len(calib), len(skipped))
    model, whitening_info = choose_whitening(ck.model, gallery.x, gallery.labels, queries.x, queries.labels,
                                             mode=whitening, shrinkage=whitening_shrinkage)
    log.info("whitening %s", whitening_info)

    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        args = (spec, dim, tmp, calib, queries, gallery, threads, min_cosine, max_r1_drop, openvino_preset)
        reports, candidates, ov_settings = _quantize_and_compare(model, *args)
        if whitening == "auto" and whitening_info["applied"] and not all(r.passed for r in reports):
            # Whitening stretches the directions int8 noise lives in too; a bundle that passes beats one that
            # would recall better in fp32 only.
            failed = "; ".join(r.summary() for r in reports if not r.passed)
            log.warning("int8 parity fails with whitening (%s); exporting without it", failed)
            whitening_info = {**whitening_info, "applied": False, "dropped_because": f"int8 parity: {failed}"}
            reports, candidates, ov_settings = _quantize_and_compare(ck.model, *args)
        gate(reports, force=force)
        best, ov_report, ov_fp32 = reports

        files = [
            describe_file(tmp, FP32_FILE, precision="fp32", backend="onnxruntime"),
            describe_file(tmp, INT8_FILE, precision="int8-qdq", backend="onnxruntime"),
            describe_file(tmp, OV_FILE, precision="openvino-int8", backend="openvino"),
            describe_file(tmp, OV_FILE[:-4] + ".bin", role="weights", precision="openvino-int8", backend="openvino"),
        ]
        parity = {
            "passed": all(r.passed for r in reports), "forced": bool(force and not all(r.passed for r in reports)),
            "held_out": {"queries": len(queries.x), "gallery": len(gallery.x),
                         "how": "training run's carved validation as queries, rest of the catalog split as gallery"},
            "fp32_macro_r1": best.ref_macro_r1,
            "int8-qdq": best.to_dict(), "int8-qdq-candidates": [c.to_dict() for c in candidates],
            "openvino-int8": ov_report.to_dict(), "openvino-fp32": ov_fp32.to_dict(),
        }
        provenance = {
            "created_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "checkpoint": {"path": str(checkpoint), "sha256": sha256_file(checkpoint)},
            "training": {k: v for k, v in ck.report.items() if k not in ("skipped", "history")},
            "pretrained": ck.report.get("pretrained"),  # package, version, sha256, licence and ImageNet terms
            "whitening": whitening_info,
            "data": {"source": data_source, "images": len(samples), "digest": data_digest(samples)},
            "calibration": {"images": len(calib), "selection": "spread over products, from the parity gallery",
                            "int8-qdq": {"tool": "onnxruntime.quantization.quantize_static", "format": "QDQ",
                                         "activations": "uint8 asymmetric", "weights": "int8 symmetric",
                                         "method": "MinMax",
                                         "granularity": "per-channel" if "per-channel" in best.candidate
                                         else "per-tensor"},
                            "openvino-int8": ov_settings},
            "skipped_images": {"count": len(skipped), "files": [list(s) for s in skipped]},
            "tools": tool_versions(),
        }
        s = spec.input_size
        manifest = manifest_dict(
            name=name, version=version or dt.datetime.now(dt.UTC).strftime("%Y.%m.%d"), modality="image",
            embedding_dim=dim, metric="cos", preprocess=spec,
            inputs=[TensorSpec(name=INPUT_NAME, shape=("batch", 3, s, s))],
            output=TensorSpec(name=OUTPUT_NAME, shape=("batch", dim)), files=files,
            provenance=provenance, parity=parity)
        bundle = install(tmp, out, manifest)
        return BuildResult(bundle=bundle, reports=tuple(reports), candidates=tuple(candidates), skipped=skipped)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _quantize_and_compare(model: Any, spec: PreprocessSpec, dim: int, tmp: Path, calib: np.ndarray, queries: ImageSet,
                          gallery: ImageSet, threads: int, min_cosine: float, max_r1_drop: float,
                          openvino_preset: str) -> tuple[list[ParityReport], list[ParityReport], dict[str, Any]]:
    """fp32 ONNX of ``model`` -> QDQ per-tensor/per-channel (the better kept) + OpenVINO int8, each vs fp32.

    Both int8 paths keep the stem convolution and the tail after the last convolution (pooling,
    whitening, normalisation) in fp32: int8 in the tail rounds the small differences between
    similar products away (whitening would stretch that rounding), and a 3-channel stem runs
    slower in int8 than in fp32 (:func:`export.quantize.fp32_nodes`).
    """
    export_onnx(model, spec, tmp / FP32_FILE, embedding_dim=dim)
    ref = _embed(embed_onnx, tmp / FP32_FILE, queries, gallery, threads)

    candidates: list[ParityReport] = []
    for per_channel in (False, True):
        label = "int8-qdq per-channel" if per_channel else "int8-qdq per-tensor"
        path = tmp / ("cand-pc.onnx" if per_channel else "cand-pt.onnx")
        quantize_qdq(tmp / FP32_FILE, path, calib, per_channel=per_channel, exclude_nodes=fp32_nodes(tmp / FP32_FILE))
        candidates.append(_gate_one(label, embed_onnx, path, ref, queries, gallery, threads, min_cosine,
                                    max_r1_drop))
    best = max(candidates, key=lambda r: (r.passed, r.macro_r1, r.mean_cosine))
    (tmp / ("cand-pc.onnx" if "per-channel" in best.candidate else "cand-pt.onnx")).rename(tmp / INT8_FILE)
    for f in tmp.glob("cand-*.onnx"):
        f.unlink()

    _, ov_settings = quantize_openvino(tmp / FP32_FILE, tmp / OV_FILE, calib, preset=openvino_preset)
    ov_report = _gate_one("openvino-int8", embed_openvino, tmp / OV_FILE, ref, queries, gallery, threads,
                          min_cosine, max_r1_drop)
    ov_fp32 = _gate_one("openvino-fp32", embed_openvino, tmp / FP32_FILE, ref, queries, gallery, threads,
                        min_cosine, max_r1_drop)
    reports = [best, ov_report, ov_fp32]
    for r in [*candidates, ov_report, ov_fp32]:
        log.info("parity %s", r.summary())
    return reports, candidates, ov_settings


def _embed(fn: Callable[[Path, np.ndarray, int], np.ndarray], path: Path, queries: ImageSet, gallery: ImageSet,
           threads: int) -> tuple[np.ndarray, np.ndarray]:
    return fn(path, queries.x, threads), fn(path, gallery.x, threads)


def _gate_one(label: str, fn: Callable[[Path, np.ndarray, int], np.ndarray], path: Path,
              ref: tuple[np.ndarray, np.ndarray], queries: ImageSet, gallery: ImageSet, threads: int,
              min_cosine: float, max_r1_drop: float) -> ParityReport:
    q, g = _embed(fn, path, queries, gallery, threads)
    return compare(label, ref[0], ref[1], q, g, queries.labels, gallery.labels, min_cosine=min_cosine,
                   max_r1_drop=max_r1_drop)


def install(tmp: Path, out: Path, manifest: dict[str, Any]) -> Bundle:
    """Write the manifest, verify the folder as the runtime would, then swap it into place."""
    write_manifest(tmp, manifest)
    load_bundle(tmp)
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return load_bundle(out)
