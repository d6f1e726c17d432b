"""Test-time flips for the image encoder: does averaging a photo's and its mirror's embeddings help?

    python -m benchmarks.tta --root DIR [--bundle DIR] [--json OUT]

Chosen on the bundle's sessions carve of train (the carve photos as queries, the rest of train as
the gallery), reported on val (train as the gallery); macro R@1, products ranked as the runtime
ranks them (mean of a product's top 3 photos). The flipped variant embeds every photo (gallery and
queries alike) twice, mirrored left-right, and uses the normalised mean: twice the encoder time.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._results import write_json
from benchmarks.accuracy import bundle_carve, embed_items, evaluate, load_split
from edge.core.config import ModelSettings
from edge.models.bundle import default_bundle_path, load_bundle
from edge.models.encoders import ImageEncoder, load_image_encoder


class FlipAveraged:
    """An image encoder that embeds each image and its mirror and returns their normalised mean."""

    def __init__(self, inner: ImageEncoder) -> None:
        self.inner, self.dim, self.fingerprint = inner, inner.dim, inner.fingerprint

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        v = self.inner.embed(images) + self.inner.embed([np.ascontiguousarray(i[:, ::-1]) for i in images])
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def run(root: Path, bundle: Path | None) -> dict[str, Any]:
    enc = load_image_encoder(ModelSettings(image_bundle=bundle))
    prov = load_bundle(bundle or default_bundle_path("image"), modality="image").provenance
    gal, val = load_split(root, root / "train.txt"), load_split(root, root / "val.txt")
    keep, carve = bundle_carve(gal, prov)
    out: dict[str, Any] = {"bundle": enc.fingerprint}
    for name, e in (("plain", enc), ("flip", FlipAveraged(enc))):
        g, gk, _ = embed_items(e, gal, progress=False)  # type: ignore[arg-type]
        pos = {str(it.path): i for i, it in enumerate(gk)}
        ki, ci = [pos[str(it.path)] for it in keep], [pos[str(it.path)] for it in carve]
        v, vk, _ = embed_items(e, val, progress=False)  # type: ignore[arg-type]
        out[name] = {"carve": evaluate(g[ci], [gk[i] for i in ci], g[ki], [gk[i] for i in ki])["macro_r1"],
                     "val": evaluate(v, vk, g, gk)["macro_r1"]}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.tta", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, required=True, help="the Grocery Store dataset folder")
    p.add_argument("--bundle", type=Path, default=None, help="image bundle (default: the embedded one)")
    p.add_argument("--json", type=Path, help="write the figures here")
    args = p.parse_args(argv)
    res = run(args.root, args.bundle)
    print(json.dumps(res, indent=2))
    if args.json:
        write_json(args.json, res, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
