"""Which layers stay fp32 in the int8 image encoder: latency and cosine of quantization variants.

    python -m benchmarks.int8_variants --root ../shared/datasets/grocery-store [--bundle DIR] [--runs 300]
        [--json OUT]

Re-quantizes a bundle's fp32 ONNX model (onnxruntime QDQ per-channel, as ``export.quantize``
does, and OpenVINO NNCF) with different sets of nodes kept in fp32, calibrated on 300 train-split
photos (every ninth line): all convolutions int8, the shipped choice (the stem convolution and
the tail after the last convolution fp32), the tail only, and the stem plus the first
depthwise convolutions. For each: single-crop p50 on one thread (the variants taking turns,
as in ``benchmarks.encoders``), its ratio to the same backend's fp32, and the mean cosine to
fp32 over 64 photos. This is the measurement behind :func:`export.quantize.fp32_nodes`.
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._results import write_json
from benchmarks.encoders import interleaved
from edge.models.bundle import default_bundle_path, load_bundle
from edge.models.encoders.onnx import open_session
from edge.models.preprocess import prepare_batch, read_image
from export.openvino import quantize_openvino
from export.quantize import fp32_nodes, quantize_qdq


def calibration(root: Path, spec: Any, count: int = 300) -> np.ndarray:
    lines = [ln.split(",")[0].strip() for ln in (root / "train.txt").read_text().splitlines() if ln.strip()]
    return np.stack([prepare_batch([read_image(root / p)], spec)[0] for p in lines[::9][:count]])


def onnx_variants(fp32: Path, calib: np.ndarray, work: Path) -> dict[str, Path]:
    """name -> int8 QDQ model, each keeping a different node set fp32."""
    import onnx

    g = onnx.load(str(fp32)).graph
    convs = [n for n in g.node if n.op_type == "Conv"]
    stem_and_tail, tail = fp32_nodes(fp32), fp32_nodes(fp32, stem=False)
    dws = [n.name for n in convs if any(a.name == "group" and a.i > 1 for a in n.attribute)]
    sets = {"all int8": [], "tail fp32": tail, "stem + tail fp32 (shipped)": stem_and_tail,
            "stem + first depthwise + tail fp32": stem_and_tail + dws[:1]}
    return {name: quantize_qdq(fp32, work / f"v{i}.onnx", calib, per_channel=True, exclude_nodes=keep)
            for i, (name, keep) in enumerate(sets.items())}


def openvino_variants(fp32: Path, calib: np.ndarray, work: Path) -> dict[str, Any]:
    """name -> compiled OpenVINO model (fp32, int8 with the tail fp32, int8 with stem + tail fp32)."""
    import openvino as ov

    core = ov.Core()
    cfg = {"INFERENCE_NUM_THREADS": 1, "PERFORMANCE_HINT": "LATENCY"}
    out = {"openvino fp32": core.compile_model(ov.convert_model(str(fp32)), "CPU", cfg)}
    for name, stem in (("openvino int8, tail fp32", False), ("openvino int8, stem + tail fp32 (shipped)", True)):
        xml, _ = quantize_openvino(fp32, work / f"ov-{int(stem)}.xml", calib, keep_stem=stem)
        out[name] = core.compile_model(str(xml), "CPU", cfg)
    return out


def _run_onnx(sess: Any, x: np.ndarray) -> np.ndarray:
    return np.asarray(sess.run(None, {sess.get_inputs()[0].name: x})[0])


def _run_openvino(compiled: Any, x: np.ndarray) -> np.ndarray:
    return np.asarray(compiled([x])[0])


def measure(root: Path, bundle_root: Path, runs: int) -> dict[str, Any]:
    bundle = load_bundle(bundle_root)
    if bundle.preprocess is None:
        raise SystemExit(f"{bundle_root} is not an image bundle")
    fp32 = bundle_root / "image-fp32.onnx"
    calib = calibration(root, bundle.preprocess)
    sample = calib[:64]
    runners: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    with tempfile.TemporaryDirectory() as td:
        paths = {"onnxruntime fp32": fp32, **{f"onnxruntime {k}": v for k, v in onnx_variants(fp32, calib,
                                                                                            Path(td)).items()}}
        for name, path in paths.items():
            runners[name] = functools.partial(_run_onnx, open_session(path, threads=1))
        for name, compiled in openvino_variants(fp32, calib, Path(td)).items():
            runners[name] = functools.partial(_run_openvino, compiled)
        embs = {k: np.concatenate([fn(sample[i : i + 1]) for i in range(len(sample))]) for k, fn in runners.items()}
        times = interleaved({k: functools.partial(fn, sample[:1]) for k, fn in runners.items()}, runs)
    rows = {}
    for name, t in times.items():
        base = "onnxruntime fp32" if name.startswith("onnxruntime") else "openvino fp32"
        rows[name] = {"p50_ms": round(float(np.median(t)), 3),
                      "vs_fp32": round(float(np.median(times[base]) / np.median(t)), 3),
                      "cosine_to_fp32": round(float((embs[name] * embs[base]).sum(axis=1).mean()), 4)}
    return {"bundle": bundle.fingerprint, "input": bundle.preprocess.input_size, "runs": runs,
            "load_avg": os.getloadavg(), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.int8_variants", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, required=True, help="the grocery-store dataset folder (calibration photos)")
    ap.add_argument("--bundle", type=Path, default=None, help="image bundle (default: the embedded one)")
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    out = measure(args.root, args.bundle or default_bundle_path("image"), args.runs)
    for name, r in out["rows"].items():
        print(f"{name:<48} p50 {r['p50_ms']:6.3f} ms  x{r['vs_fp32']:<6} cosine {r['cosine_to_fp32']}")
    if args.json:
        write_json(args.json, out, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
