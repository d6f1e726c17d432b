"""The README's bundle change "swapped in between two frames", with the real parts `storelens run` wires
(edge.pipeline.factory.build_runtime): two real bundles on disk, the real Store, a frame loop playing a
camera folder. A reload before the catalog was re-embedded is refused and keeps the old state; after
`storelens catalog reindex --reembed` it swaps encoder and Store together and decisions stay right."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

from edge.catalog.store import Store
from edge.core.config import load_settings
from edge.models.encoders import load_image_encoder
from edge.pipeline.factory import build_runtime
from tests.ops_helpers import storelens, wait_for
from tests.runtime_helpers import product_image, write_frames
from tests.test_bundle import make_bundle
from tests.tiny_model import build_tiny_encoder

SKUS = ["RED", "GREEN", "BLUE"]


def test_reload_swaps_a_real_bundle_and_the_real_store_between_frames(tmp_path: Path) -> None:
    build_tiny_encoder(tmp_path / "a.onnx", seed=0)
    build_tiny_encoder(tmp_path / "b.onnx", seed=7)
    bundle = make_bundle(tmp_path / "bundle", tmp_path / "a.onnx")  # the folder the config names
    frames = write_frames(tmp_path / "frames", SKUS, per_sku=6)
    cfg = tmp_path / "device.toml"
    cfg.write_text(f'[device]\nstore = "s1"\nid = "d1"\n[model]\nimage_bundle = "{bundle}"\nprecision = "fp32"\n'
                   f'[catalog]\ndata_dir = "{tmp_path / "data"}"\nindex_dtype = "f32"\n'
                   f'[[cameras]]\nname = "cam"\nsource = "{frames}"\nfps = 30\nloop = true\n'
                   '[gate]\nenabled = false\n[decision]\nwindow = 3\nmin_frames = 2\nheartbeat_s = 0.3\n'
                   '[mqtt]\nenabled = false\n[ocr]\nenabled = false\n')
    s = load_settings(cfg)
    enc_a = load_image_encoder(s.model)
    store = Store.from_settings(s, image_encoder=enc_a, text_encoder=None)
    for sku in SKUS:
        store.enroll(sku, name=sku.title(), images=[product_image(sku), product_image(sku, shift=4)])
    store.close()

    rt = build_runtime(s)
    decided: list[tuple[str, str | None, str]] = []  # (bundle at the time, top sku, decision)
    rt.decision_listeners.append(lambda msg, _crop: decided.append(
        (rt.encoder.fingerprint, (msg.get("candidates") or [{}])[0].get("sku"), msg["decision"])))
    stop = threading.Event()
    crashed: list[BaseException] = []

    def run() -> None:
        try:
            rt.run(stop, max_seconds=120)
        except BaseException as e:
            crashed.append(e)

    rt.start()
    loop = threading.Thread(target=run, daemon=True)
    loop.start()
    try:
        assert wait_for(lambda: len(decided) >= 3, timeout=60)
        old_matcher = rt.matcher
        assert isinstance(old_matcher, Store) and rt.encoder.fingerprint == enc_a.fingerprint

        # a new bundle arrives in the folder the config names (as a fleet update would put it there)
        shutil.rmtree(bundle)
        make_bundle(bundle, tmp_path / "b.onnx")
        fp_b = load_image_encoder(s.model).fingerprint
        assert fp_b != enc_a.fingerprint
        refused = rt.router.handle("reload", b'{"id": "r1"}')  # the catalog has no vectors from it yet
        assert not refused["ok"] and "reindex" in refused["error"], refused
        assert rt.encoder.fingerprint == enc_a.fingerprint and rt.matcher is old_matcher  # the old state kept
        n = len(decided)
        assert wait_for(lambda: len(decided) > n + 2, timeout=30)  # and it keeps deciding

        res = storelens("catalog", "reindex", "--reembed", "--config", str(cfg), timeout=120)
        assert res.returncode == 0, res.stderr[-2000:]
        reply = rt.router.handle("reload", b'{"id": "r2"}')
        assert reply["ok"] and reply["result"]["bundle"] == fp_b, reply
        new_matcher = rt.matcher
        assert isinstance(new_matcher, Store) and new_matcher is not old_matcher
        assert new_matcher.image_encoder is rt.encoder and rt.encoder.fingerprint == fp_b
        meta = new_matcher.index_meta("image")
        assert meta is not None and meta.fingerprint == fp_b  # the index the new encoder built
        n = len(decided)
        assert wait_for(lambda: sum(1 for b, _, _ in decided[n:] if b == fp_b) >= 6, timeout=60)
        after = [(sku, d) for b, sku, d in decided[n:] if b == fp_b]
        assert all(sku in SKUS for sku, _ in after), after
        assert loop.is_alive() and not crashed and rt.counts["errors"] == 0, (crashed, rt.counts)
        assert rt.status()["bundle"] == fp_b
    finally:
        stop.set()
        loop.join(20)
        rt.shutdown()


