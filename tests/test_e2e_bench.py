"""benchmarks.e2e measures the shipped path: the real Store, time to decision per view shown, per-frame latency."""

from __future__ import annotations

from pathlib import Path

from benchmarks import e2e
from benchmarks._broker import Broker
from edge.catalog.store import Store


def test_e2e_runs_through_the_real_store_and_times_each_view(tmp_path: Path, broker: Broker) -> None:
    from edge.core.config import ModelSettings
    from edge.models.encoders import load_image_encoder
    from edge.pipeline.demo import calibrate_demo

    encoder = load_image_encoder(ModelSettings())
    info = e2e.build_store(tmp_path / "data", encoder, index_size=120, seed_photos=None, seed=0, seed_limit=8)
    assert info["distractor_products"] == 20 and "augmented renders" in info["seeds"]
    store = Store(data_dir=tmp_path / "data", image_encoder=encoder, dtype="i8")
    meta = store.index_meta("image")
    assert meta is not None and (meta.products, meta.vectors, meta.dtype) == (26, 118, "i8")
    r = e2e.measure_pipeline(cameras=1, fps=15, seconds=4, gate=True, store=store,
                             thresholds=calibrate_demo(encoder), broker=broker, work=tmp_path / "work", hold=12, gap=6)
    store.close()
    ttd = r["time_to_decision"]
    assert ttd["views"] >= 2 and ttd["decided"] == ttd["right"] == ttd["views"], ttd
    # speed is the benchmark's to report, not this test's to bound: only that each view was timed
    assert ttd["p50_ms"] > 0 and ttd["p95_ms"] >= ttd["p50_ms"]
    assert r["frame_latency_ms"]["p50"] is not None and r["errors"] == 0


def test_the_catalog_cache_is_keyed_by_everything_that_changes_it(tmp_path: Path) -> None:
    """A rerun never measures a catalog built with other settings, and a reused build's time is labelled cached."""
    import argparse

    from edge.catalog import index as ix
    from edge.core.config import ModelSettings
    from edge.models.encoders import load_image_encoder

    encoder = load_image_encoder(ModelSettings())
    photos = tmp_path / "seeds.txt"
    photos.write_text("a.jpg, 0, 0\n")
    key = e2e.catalog_key(encoder, index_size=100, seed=0, seed_photos=photos)
    assert (key["connectivity"], key["expansion_add"]) == (ix.DEFAULT_CONNECTIVITY, ix.DEFAULT_EXPANSION_ADD)
    assert key != e2e.catalog_key(encoder, index_size=100, seed=1, seed_photos=photos)
    photos.write_text("b.jpg, 0, 0\n")  # other seed photos: another catalog
    assert key != e2e.catalog_key(encoder, index_size=100, seed=0, seed_photos=photos)

    args = argparse.Namespace(cache=tmp_path / "cache", index_size=60, seed=0, seed_photos=None)
    store, first = e2e.open_catalog(args, encoder)
    store.close()
    assert first["cached"] is False and "build_s" in first and "cached_build_s" not in first
    store, again = e2e.open_catalog(args, encoder)
    store.close()
    assert again["cached"] is True and "build_s" not in again and again["cached_build_s"] == first["build_s"]
    assert again["data_dir"] == first["data_dir"]
