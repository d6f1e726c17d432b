"""MiniLM text encoder at the edge: `tokenizers` + onnxruntime or OpenVINO, no transformers/torch.

The bundle ships the WordPiece ``tokenizer.json`` and an ONNX graph that already does mean
pooling and L2 normalisation, so the runtime only tokenizes, runs one graph and returns unit
vectors. Texts longer than the bundle's ``max_length`` tokens are truncated (as in training of
the sentence-transformers model); the count of truncated texts is kept in ``truncated``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edge.core.config import ModelSettings
from edge.core.errors import BackendError, BundleError, InputError
from edge.models.bundle import Bundle, check_io
from edge.models.encoders.common import BundleEncoder
from edge.models.encoders.onnx import check_output, l2_normalise, open_session

_DEFAULTS = ModelSettings()
MAX_TOKENS = 128  # the sentence-transformers model's own limit, when the manifest does not say


def max_tokens(bundle: Bundle) -> int:
    """Tokens a text is truncated to (the manifest's ``text.max_length``)."""
    return int(bundle.text.get("max_length", MAX_TOKENS))


def load_tokenizer(bundle: Bundle) -> Any:
    try:
        from tokenizers import Tokenizer
    except ImportError as e:  # pragma: no cover - a runtime dependency
        raise BackendError("the tokenizers library is not installed", hint="pip install tokenizers") from e
    tok_files = [f for f in bundle.files if f.role == "tokenizer"]
    if not tok_files:
        raise BundleError(f"text bundle {bundle.root} has no tokenizer file",
                          hint="rebuild it with storelens export text")
    tok = Tokenizer.from_file(str(bundle.path_of(tok_files[0])))
    tok.enable_truncation(max_length=max_tokens(bundle))
    tok.no_padding()  # texts run one at a time (see BundleTextEncoder.embed)
    return tok


class BundleTextEncoder(BundleEncoder):
    """Strings -> (N, dim) float32 unit vectors (sentence embeddings)."""

    def __init__(self, *, bundle: Bundle, backend: str = "onnxruntime", precision: str = _DEFAULTS.precision,
                 threads: int = _DEFAULTS.threads,
                 warmup: bool = True) -> None:
        self.bundle = bundle
        self.backend = backend
        self.tokenizer = load_tokenizer(bundle)
        self.max_length = max_tokens(bundle)
        self.truncated = 0
        models = [f for f in bundle.files if f.role == "model"]
        # The committed text bundle ships int8 only (size budget); a config asking fp32 for the
        # image model still gets a text encoder, and `precision` says which one it is.
        has = {f.precision for f in models}
        if precision == "fp32" and "fp32" not in has:
            precision = "int8"
        self.precision = precision
        self.model_path = bundle.path_of(bundle.model_file(backend=backend, precision=precision))
        self._names = [t.name for t in bundle.inputs]
        if backend == "onnxruntime":
            sess = open_session(self.model_path, threads)
            check_io(bundle, self.model_path, inputs=[(i.name, tuple(i.shape)) for i in sess.get_inputs()],
                     outputs=[(o.name, tuple(o.shape)) for o in sess.get_outputs()])
            out = bundle.output.name
            self._run = lambda feed: sess.run([out], feed)[0]
        elif backend == "openvino":
            from edge.models.encoders.openvino import compile_model, io_of

            compiled = compile_model(self.model_path, threads)
            ins, outs = io_of(compiled)
            check_io(bundle, self.model_path, inputs=ins, outputs=outs)
            req, port = compiled.create_infer_request(), compiled.output(bundle.output.name)
            self._run = lambda feed: req.infer(feed)[port]
        else:
            raise BackendError(f"unknown backend {backend!r}", hint="use onnxruntime or openvino")
        if warmup:
            self.embed(["warm-up"])
            self.truncated = 0

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if isinstance(texts, str):
            raise InputError("embed() takes a list of strings, got one string", hint="wrap it: embed([text])")
        if len(texts) == 0:
            return np.zeros((0, self.dim), np.float32)
        # One text per run: dynamic int8 quantizes activations with one scale over the whole input
        # tensor, so padding and batch neighbours would shift a text's vector (cosine ~0.99). One at a
        # time, a text always gets the same vector, whether it is indexed in bulk or queried alone.
        encs = self.tokenizer.encode_batch([str(t) for t in texts])
        self.truncated += sum(1 for e in encs if e.overflowing)
        rows = []
        for e in encs:
            feed_all = {
                "input_ids": np.array([e.ids], np.int64),
                "attention_mask": np.array([e.attention_mask], np.int64),
                "token_type_ids": np.array([e.type_ids], np.int64),
            }
            rows.append(np.asarray(self._run({k: v for k, v in feed_all.items() if k in self._names}), np.float32))
        return check_output(l2_normalise(np.concatenate(rows)), self.dim, self.model_path)
