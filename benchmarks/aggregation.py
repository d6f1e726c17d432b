"""Max vs mean aggregation of a product's reference-photo hits, on labelled photos against a catalog.

    python -m benchmarks.aggregation --data-dir /tmp/gs ../shared/datasets/grocery-store/val.txt [--json OUT]

Import the catalog first (``storelens catalog import ../shared/datasets/grocery-store --data-dir ...``).
Every photo is embedded once and searched once; both rules rank the same vector hits, so the
comparison is side by side. Accuracy is macro-averaged over products (the val split is unbalanced).
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np

from edge.catalog.calibration import read_labelled
from edge.catalog.ranking import aggregate_hits
from edge.catalog.store import Store
from edge.core.config import DeviceSettings, load_settings
from edge.models.preprocess import read_image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("labelled", type=Path)
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    from edge.models.encoders import load_image_encoder

    settings = load_settings(None, device=DeviceSettings(store="local", id="bench").model_dump(),
                             catalog={"data_dir": str(args.data_dir)})
    store = Store.from_settings(settings, image_encoder=load_image_encoder(settings.model), text_encoder=None)
    labelled = read_labelled(args.labelled)
    enrolled = {p.sku for p in store.catalog.products()}
    labelled = [(p, s) for p, s in labelled if s in enrolled]
    enc = store.image_encoder
    assert enc is not None
    embs = np.concatenate([enc.embed([read_image(p) for p, _ in labelled[i : i + 32]])
                           for i in range(0, len(labelled), 32)])
    idx = store._indexes["image"]
    assert idx is not None, "import a catalog first"
    hits = idx.search(embs, 200)
    skus = {k: p.sku for k, p in store.catalog.by_keys(np.unique(hits.keys).tolist()).items()}
    labels = [s for _, s in labelled]
    rows = []
    for rule in ("max", "mean"):
        per_key = idx.vectors_per_key(np.unique(hits.keys[hits.scores > -2]))
        ranked = aggregate_hits(hits, k=5, rule=rule, vectors_per_key=per_key)  # type: ignore[arg-type]
        top1 = np.array([bool(r) and skus.get(r[0][0]) == y for r, y in zip(ranked, labels, strict=True)])
        top5 = np.array([y in [skus.get(k) for k, _ in r] for r, y in zip(ranked, labels, strict=True)])
        per = sorted(set(labels))
        macro1 = float(np.mean([top1[[y == s for y in labels]].mean() for s in per]))
        macro5 = float(np.mean([top5[[y == s for y in labels]].mean() for s in per]))
        rows.append({"rule": rule, "queries": len(labels), "products": len(per), "top1_macro": round(macro1, 4),
                     "top5_macro": round(macro5, 4), "top1_micro": round(float(top1.mean()), 4)})
    meta = idx.meta
    print(f"catalog: {meta.products} products, {meta.vectors} vectors ({meta.dtype}); encoder {meta.fingerprint}; "
          f"{platform.processor() or platform.machine()}")
    print(f"{'rule':<6} {'top1 macro':>10} {'top5 macro':>10} {'top1 micro':>10}")
    for r in rows:
        print(f"{r['rule']:<6} {r['top1_macro']:>10.4f} {r['top5_macro']:>10.4f} {r['top1_micro']:>10.4f}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "index": meta.to_dict()}, indent=2))
    store.close()


if __name__ == "__main__":
    main()
