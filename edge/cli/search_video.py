"""``storelens search --video CLIP``: one answer for a clip, through the kiosk's item logic (edge.pipeline.clip)."""

from __future__ import annotations

import argparse
import itertools
import json

import numpy as np

from edge.cli.common import open_store, settings_from_args
from edge.core.types import Candidate
from edge.pipeline.clip import decide_clip, read_clip
from edge.pipeline.loop import vote_params


def run_video(args: argparse.Namespace) -> int:
    """Print the clip's answer and its candidates (or JSON); exit 0 whether known or unknown."""
    settings = settings_from_args(args)
    frames = read_clip(args.video)  # checks the file before a model is loaded
    first = next(frames)
    store = open_store(args, image=True, text=False)
    try:
        params = vote_params(settings, store)
        encoder = store.image_encoder
        assert encoder is not None  # open_store(image=True) loads it

        def match(images: list[np.ndarray], k: int) -> list[list[Candidate]]:
            return store.match_vectors(encoder.embed(images), k)

        answer = decide_clip(itertools.chain([first], frames), match, params, settings.gate)
        version = store.catalog_version
    finally:
        store.close()
    if args.json:
        print(json.dumps({**answer.to_dict(), "catalog_version": version,
                          "thresholds": {"score": params.threshold, "margin": params.margin,
                                         "source": params.source}}, indent=2, ensure_ascii=False))
        return 0
    d = answer.decision
    how = "steady views" if answer.gate == "steady" else "no view held still: evenly spaced frames"
    print(f"{args.video}: {answer.frames_read} frames read, {answer.frames_embedded} embedded ({how}), "
          f"{answer.items} item(s)")
    if d is None:
        print("answer: unknown (no frame could be decided)")
        return 0
    named = f"{d.candidates[0].name} ({d.sku})" if d.decision == "known" else "unknown"
    print(f"answer: {named} from {d.views} view(s)")
    cards = d.candidates[1:] if d.decision == "known" else d.candidates
    if cards:
        print("not this product? " + ", ".join(f"{c.name} ({c.sku}, {c.score:.2f})" for c in cards))
    return 0
