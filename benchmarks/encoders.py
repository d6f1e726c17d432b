"""Image encoder speed per backend x precision, side by side with plain torch eager fp32.

    python -m benchmarks.encoders [--bundle DIR] [--checkpoint encoder.pt] [--runs 300] [--text-bundle DIR]
        [--json OUT]

For each of torch eager fp32 (reference), onnxruntime fp32/int8 and OpenVINO fp32/int8:
single-crop latency p50/p99 on 1 thread (the model only, input already preprocessed; the
preprocessing cost is measured once separately) and batch throughput (batch 32) on all cores.
Printed as absolute figures and as ratios to torch and to the same backend's fp32, with the
machine and library versions. Timings are only comparable within one run: the rows are
measured taking turns (round robin) so background load hits them alike.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge.models.bundle import default_bundle_path, load_bundle
from edge.models.encoders.onnx import OnnxImageEncoder
from edge.models.encoders.openvino import OpenVinoImageEncoder
from edge.models.preprocess import prepare_batch

BATCH = 32


def interleaved(fns: dict[str, Callable[[], Any]], runs: int, warmup: int = 5) -> dict[str, np.ndarray]:
    """Milliseconds per call, the models taking turns, so background load hits them all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    out = {k: np.empty(runs) for k in fns}
    for i in range(runs):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            out[k][i] = (time.perf_counter() - t) * 1000.0
    return out


def torch_runner(bundle_root: Path, checkpoint: Path | None, threads: int) -> Callable[[np.ndarray], Any]:
    """torch eager fp32 of the same architecture (weights from the checkpoint when given)."""
    import torch

    from export.model import EncoderArch, ProductEncoder

    torch.set_num_threads(threads)
    bundle = load_bundle(bundle_root)
    arch_d = bundle.provenance.get("training", {}).get("arch")
    if checkpoint is not None and checkpoint.is_file():
        from export.onnx import load_checkpoint

        model = load_checkpoint(checkpoint).model
    else:  # speed does not depend on the weights
        model = ProductEncoder(EncoderArch.from_dict(arch_d) if arch_d else EncoderArch()).eval()

    def run(x: np.ndarray) -> Any:
        torch.set_num_threads(threads)  # the 1-thread and all-core runners share torch's global pool
        with torch.inference_mode():
            return model(torch.from_numpy(x))

    return run


def measure(bundle_root: Path, checkpoint: Path | None, runs: int, cores: int) -> dict[str, Any]:
    bundle = load_bundle(bundle_root)
    spec = bundle.preprocess
    if spec is None:
        raise SystemExit(f"{bundle_root} is not an image bundle")
    s = spec.input_size
    photo = np.random.default_rng(0).integers(0, 255, (480, 640, 3), np.uint8)
    x1 = prepare_batch([photo], spec)
    xb = prepare_batch([photo] * BATCH, spec)
    single: dict[str, Callable[[np.ndarray], Any]] = {"torch eager fp32": torch_runner(bundle_root, checkpoint, 1)}
    batch: dict[str, Callable[[np.ndarray], Any]] = {"torch eager fp32": torch_runner(bundle_root, checkpoint, cores)}
    for cls, backend in ((OnnxImageEncoder, "onnxruntime"), (OpenVinoImageEncoder, "openvino")):
        for precision in ("fp32", "int8"):
            single[f"{backend} {precision}"] = cls(bundle=bundle, precision=precision, threads=1).embed_tensor
            batch[f"{backend} {precision}"] = cls(bundle=bundle, precision=precision, threads=cores).embed_tensor
    lat = interleaved({k: functools.partial(f, x1) for k, f in single.items()}, runs)
    bt = interleaved({k: functools.partial(f, xb) for k, f in batch.items()}, max(10, runs // 10), warmup=2)
    pre = interleaved({"pre": lambda: prepare_batch([photo], spec)}, runs)["pre"]
    rows: dict[str, Any] = {k: {"p50_ms": float(np.percentile(v, 50)), "p99_ms": float(np.percentile(v, 99)),
                                "batch_img_per_s": float(BATCH / (np.median(bt[k]) / 1000.0))}
                            for k, v in lat.items()}
    rows["preprocess_ms_p50"] = float(np.percentile(pre, 50))
    rows["input"] = f"(1|{BATCH}, 3, {s}, {s})"
    return rows


def measure_text(bundle_root: Path, runs: int) -> dict[str, Any]:
    """Per-query latency of the text bundle (one short product query, 1 thread), per backend."""
    from edge.models.encoders.text import BundleTextEncoder

    bundle = load_bundle(bundle_root, modality="text")
    encs = {b: BundleTextEncoder(bundle=bundle, backend=b, threads=1) for b in ("onnxruntime", "openvino")}
    lat = interleaved({b: functools.partial(e.embed, ["organic oat milk one litre"]) for b, e in encs.items()}, runs)
    return {f"text {b} int8": {"p50_ms": float(np.percentile(v, 50)), "p99_ms": float(np.percentile(v, 99))}
            for b, v in lat.items()}


def report(rows: dict[str, Any]) -> str:
    ref = rows["torch eager fp32"]
    head = ("model", "p50 ms", "p99 ms", "x torch", "x fp32", "batch img/s", "x torch")
    lines = ["{:<20} {:>8} {:>8} {:>8} {:>7} {:>12} {:>8}".format(*head)]
    for name, r in rows.items():
        if not isinstance(r, dict) or name == "text":
            continue
        fp32 = rows.get(name.replace("int8", "fp32"), r)
        lines.append(f"{name:<20} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {ref['p50_ms'] / r['p50_ms']:8.2f} "
                     f"{fp32['p50_ms'] / r['p50_ms']:7.2f} {r['batch_img_per_s']:12.0f} "
                     f"{r['batch_img_per_s'] / ref['batch_img_per_s']:8.2f}")
    lines.append(f"preprocessing (decode excluded) p50 {rows['preprocess_ms_p50']:.2f} ms per 640x480 frame")
    for name, r in rows.get("text", {}).items():
        lines.append(f"{name}: p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms per query (1 thread)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.encoders", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, default=default_bundle_path("image"), help="image bundle (default: embedded)")
    p.add_argument("--checkpoint", type=Path, default=None, help="encoder.pt for the torch reference (optional)")
    p.add_argument("--runs", type=int, default=300, help="single-image runs per model")
    p.add_argument("--text-bundle", type=Path, default=default_bundle_path("text"),
                   help="also time this text bundle per query (default: embedded)")
    p.add_argument("--json", type=Path, help="write the figures here")
    args = p.parse_args(argv)
    from benchmarks.accuracy import machine

    cores = os.cpu_count() or 1
    rows = measure(args.bundle, args.checkpoint, args.runs, cores)
    if args.text_bundle is not None:
        rows["text"] = measure_text(args.text_bundle, max(20, args.runs // 3))
    import torch

    info = {**machine(), "torch": torch.__version__, "bundle": str(args.bundle),
            "fingerprint": load_bundle(args.bundle).fingerprint, "load_avg": os.getloadavg()}
    print(report(rows))
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"results": rows, "machine": info}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
