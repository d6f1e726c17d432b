"""Helpers the catalog, search, calibrate, ocr and recommend commands share: settings and the store."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edge.catalog.store import Store
from edge.core.config import DeviceSettings, Settings, load_settings


def add_common(p: argparse.ArgumentParser) -> None:
    """--config / --data-dir, shared by the catalog, search and calibrate commands."""
    p.add_argument("--config", type=Path, default=None,
                   help="StoreLens TOML config (default: built-in defaults; catalog in catalog.data_dir)")
    p.add_argument("--data-dir", type=Path, default=None, help="catalog folder (overrides catalog.data_dir)")


def settings_from_args(args: argparse.Namespace) -> Settings:
    over: dict[str, Any] = {}
    if args.data_dir is not None:
        over["catalog"] = {"data_dir": str(args.data_dir)}
    if args.config is None:  # commands run without a config still need a device identity
        over["device"] = DeviceSettings(store="local", id="cli").model_dump()
    return load_settings(args.config, **over)


def open_store(args: argparse.Namespace, *, image: bool, text: bool, open_indexes: bool = True) -> Store:
    """A Store with only the encoders this command needs (loading a model costs seconds)."""
    settings = settings_from_args(args)
    img_enc = txt_enc = None
    if image or text:
        from edge.models.encoders import load_image_encoder, load_text_encoder

        img_enc = load_image_encoder(settings.model) if image else None
        txt_enc = load_text_encoder(settings.model) if text else None
    if not open_indexes:
        c = settings.catalog
        return Store(data_dir=c.data_dir, image_encoder=img_enc, text_encoder=txt_enc, dtype=c.index_dtype,
                     open_indexes=False)
    return Store.from_settings(settings, image_encoder=img_enc, text_encoder=txt_enc)
