"""Image encoder speed per backend x precision, side by side with plain torch eager fp32.

    python -m benchmarks.encoders [--bundle DIR] [--checkpoint encoder.pt] [--runs 300] [--json OUT]

For each of torch eager fp32 (reference), onnxruntime fp32/int8 and OpenVINO fp32/int8:
single-crop latency p50/p99 on 1 thread (the model only, input already preprocessed; the
preprocessing cost is measured once separately) and batch throughput (batch 32) on all cores.
Printed as absolute figures and as ratios to torch and to the same backend's fp32, with the
machine and library versions. Timings are only comparable within one run: the rows are
measured interleaved-free but back to back on the same machine state.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge.bundle import default_bundle_path, load_bundle
from edge.encoders.onnx import OnnxImageEncoder
from edge.encoders.openvino import OpenVinoImageEncoder
from edge.preprocess import prepare_batch

BATCH = 32


def timed(fn: Callable[[], Any], runs: int, warmup: int = 10) -> np.ndarray:
    for _ in range(warmup):
        fn()
    out = np.empty(runs)
    for i in range(runs):
        t = time.perf_counter()
        fn()
        out[i] = time.perf_counter() - t
    return out * 1000.0


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
        with torch.inference_mode():
            return model(torch.from_numpy(x))

    return run


def measure(bundle_root: Path, checkpoint: Path | None, runs: int, cores: int) -> dict[str, Any]:
    import torch

    bundle = load_bundle(bundle_root)
    if bundle.preprocess is None:
        raise SystemExit(f"{bundle_root} is not an image bundle")
    s = bundle.preprocess.input_size
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 255, (480, 640, 3), np.uint8)
    x1 = prepare_batch([photo], bundle.preprocess)
    xb = prepare_batch([photo] * BATCH, bundle.preprocess)
    rows: dict[str, Any] = {"preprocess_ms_p50": float(np.percentile(
        timed(lambda: prepare_batch([photo], bundle.preprocess), runs), 50))}

    def add(name: str, single: Callable[[np.ndarray], Any], batch: Callable[[np.ndarray], Any]) -> None:
        lat = timed(lambda: single(x1), runs)
        bt = timed(lambda: batch(xb), max(10, runs // 10), warmup=3)
        rows[name] = {"p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
                      "batch_img_per_s": float(BATCH / (np.median(bt) / 1000.0))}
        print(f"  measured {name}", file=sys.stderr)

    t1, tn = torch_runner(bundle_root, checkpoint, 1), torch_runner(bundle_root, checkpoint, cores)
    add("torch eager fp32", lambda x: (torch.set_num_threads(1), t1(x)),
        lambda x: (torch.set_num_threads(cores), tn(x)))
    for cls, backend in ((OnnxImageEncoder, "onnxruntime"), (OpenVinoImageEncoder, "openvino")):
        for precision in ("fp32", "int8"):
            one = cls(bundle=bundle, precision=precision, threads=1)
            many = cls(bundle=bundle, precision=precision, threads=cores)
            add(f"{backend} {precision}", one.embed_tensor, many.embed_tensor)
    rows["input"] = f"(1|{BATCH}, 3, {s}, {s})"
    return rows


def report(rows: dict[str, Any]) -> str:
    ref = rows["torch eager fp32"]
    head = ("model", "p50 ms", "p99 ms", "x torch", "x fp32", "batch img/s", "x torch")
    lines = ["{:<20} {:>8} {:>8} {:>8} {:>7} {:>12} {:>8}".format(*head)]
    for name, r in rows.items():
        if not isinstance(r, dict):
            continue
        fp32 = rows.get(name.replace("int8", "fp32"), r)
        lines.append(f"{name:<20} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {ref['p50_ms'] / r['p50_ms']:8.2f} "
                     f"{fp32['p50_ms'] / r['p50_ms']:7.2f} {r['batch_img_per_s']:12.0f} "
                     f"{r['batch_img_per_s'] / ref['batch_img_per_s']:8.2f}")
    lines.append(f"preprocessing (decode excluded) p50 {rows['preprocess_ms_p50']:.2f} ms per 640x480 frame")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.encoders", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, default=default_bundle_path("image"), help="image bundle (default: embedded)")
    p.add_argument("--checkpoint", type=Path, default=None, help="encoder.pt for the torch reference (optional)")
    p.add_argument("--runs", type=int, default=300, help="single-image runs per model")
    p.add_argument("--json", type=Path, help="write the figures here")
    args = p.parse_args(argv)
    from benchmarks.accuracy import machine

    cores = os.cpu_count() or 1
    rows = measure(args.bundle, args.checkpoint, args.runs, cores)
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
