"""Embedding a catalog's photos: on Ray Data (the ``fleet`` extra) or in this one process.

Ray: the photo paths become a dataset (one block per batch) and ``map_batches`` runs them
through an actor pool of ``fleet.workers`` :class:`EmbedActor` s, each holding its own encoder
(onnxruntime or OpenVINO, as ``[model]`` says) with one CPU. Locally by default (``ray.init``
with that many CPUs); with ``fleet.ray_address`` on an existing cluster, whose workers must see
the photos at the same paths (a shared mount) and have StoreLens installed. ``ray`` is imported
only when this engine runs, so edge/ works without the extra.

Both engines hand results back in batches (paths, vectors, error strings) as they finish, so
the caller can store them (the build's cache) and show progress while the rest runs.
"""

from __future__ import annotations

import logging
import math
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from edge.core.config import ModelSettings
from edge.core.errors import ImageError, InputError
from edge.models.encoders.base import ImageEncoder
from edge.models.preprocess import read_image

log = logging.getLogger("storelens.build")

OnBatch = Callable[[Sequence[str], np.ndarray, Sequence[str]], None]
"""``on_batch(paths, vectors (n, dim) float32, errors)``: an error is "" for a photo that was embedded."""
RAY_OBJECT_STORE_BYTES = 512 * 2**20  # a local Ray's shared memory: batches are small, the box is shared


def embed_paths(encoder: ImageEncoder, paths: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Read and embed ``paths`` in one batch; unreadable photos get a zero vector and their error."""
    errors = [""] * len(paths)
    images, ok = [], []
    for i, p in enumerate(paths):
        try:
            images.append(read_image(p))
            ok.append(i)
        except ImageError as e:
            errors[i] = str(e)
    out = np.zeros((len(paths), encoder.dim), np.float32)
    if images:
        out[ok] = encoder.embed(images)
    return out, errors


def load_encoder(model: ModelSettings) -> ImageEncoder:
    from edge.models.encoders import load_image_encoder

    return load_image_encoder(model)


def embed_local(paths: Sequence[str], *, model: ModelSettings, batch_size: int, on_batch: OnBatch,
                encoder: ImageEncoder | None = None) -> None:
    """This process, one batch after another (the single-process reference the Ray engine is measured against)."""
    enc = encoder or load_encoder(model)
    for a in range(0, len(paths), batch_size):
        chunk = list(paths[a : a + batch_size])
        vecs, errors = embed_paths(enc, chunk)
        on_batch(chunk, vecs, errors)


class EmbedActor:
    """One Ray actor: loads the encoder once, then embeds batches ``{"path": [...]}``."""

    def __init__(self, model: dict[str, Any]) -> None:
        import cv2

        cv2.setNumThreads(1)  # one CPU per actor: decode and inference share it
        self.encoder = load_encoder(ModelSettings(**model))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [str(p) for p in batch["path"]]
        vecs, errors = embed_paths(self.encoder, paths)
        return {"path": np.asarray(paths, dtype=object), "vector": vecs, "error": np.asarray(errors, dtype=object)}


def _private_token() -> None:
    """Token authentication for the local Ray this build starts, with a token of its own in the environment
    (inherited by Ray's processes): Ray's default would warn about it and write ``~/.ray/auth_token`` (the
    user's home, shared with every other Ray) on a build that did nothing wrong. A token the user set is kept."""
    import os
    import secrets

    if "RAY_AUTH_MODE" not in os.environ and "RAY_AUTH_TOKEN" not in os.environ:
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)


def embed_ray(paths: Sequence[str], *, model: ModelSettings, workers: int, batch_size: int, on_batch: OnBatch,
              address: str | None = None) -> None:
    """Ray Data ``map_batches`` over an actor pool of ``workers`` encoders (see the module docstring)."""
    if not address and "ray" not in sys.modules:
        _private_token()  # only before Ray is imported: it reads its authentication mode once, at import
    try:
        import ray
        import ray.data
    except ImportError as e:
        raise InputError("the Ray engine needs the fleet extra: pip install 'storelens[fleet]'",
                         hint="or build with --engine local (one process)") from e
    if not paths:
        return
    started = not ray.is_initialized()
    if started:
        if address:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        else:
            ray.init(num_cpus=workers, object_store_memory=RAY_OBJECT_STORE_BYTES, include_dashboard=False,
                     log_to_driver=False, logging_level=logging.WARNING)
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # its plan, progress and "finished" lines: ours say it
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        items = [{"path": str(p)} for p in paths]
        ds = ray.data.from_items(items, override_num_blocks=max(1, math.ceil(len(items) / batch_size)))
        with warnings.catch_warnings():  # max_restarts has no named parameter yet (Ray 2.60): a deprecated kwarg
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
            # max_restarts=0: Ray Data's default restarts a dead actor, and Ray then logs an error-level line on
            # every build (its constructor arguments live in the object store, ray-project/ray#53727). A dead
            # actor fails the build instead; the embedding cache keeps every finished batch, so a re-run resumes.
            embedded = ds.map_batches(EmbedActor, fn_constructor_kwargs={"model": model.model_dump(mode="json")},
                                      batch_size=batch_size, batch_format="numpy", num_cpus=1, max_restarts=0,
                                      compute=ray.data.ActorPoolStrategy(size=workers))
        for out in embedded.iter_batches(batch_size=None, batch_format="numpy"):
            on_batch([str(p) for p in out["path"]], np.asarray(out["vector"], np.float32).reshape(len(out["path"]), -1),
                     [str(e) for e in out["error"]])
    finally:
        if started:
            ray.shutdown()
