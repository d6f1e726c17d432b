"""``storelens shelf setup``: a shelf camera's regions from a grid and a planogram table, not hand-typed.

The user describes the grid the facings form in the camera's frame (rows, columns, the margins
around it and the gaps between cells, as fractions of the frame) and gives the planogram as a
CSV table ``facing,sku`` (optionally ``row,col``, 1-based; without them the table is read row by
row, left to right). :func:`grid_rois` turns that into ``[[cameras.rois]]`` (name, rect,
expected_sku); the command takes a snapshot of the camera (its configured source, or ``--image``),
writes the regions as TOML and the snapshot with the regions drawn
(:func:`~edge.shelf.overlay.draw_facings`, the staff page's overlay) for the user to check.

``--enroll`` also adds each facing's crop of the snapshot as a photo of its planned product
(:func:`enroll_facings`, through the floor-learning path: source ``shelf-setup``, forgettable with
``storelens catalog forget-learned``). A shelf's question is "is the planned product still here?", and
the product as this store stocks it, lit by this camera, is the best reference there is for it.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.core.config import RoiSettings, load_settings
from edge.core.errors import ConfigError, InputError


@dataclass(frozen=True, slots=True)
class Grid:
    """Rows x columns of cells inside margins (left, top, right, bottom) with gaps (x, y); fractions of the frame."""

    rows: int
    cols: int
    margins: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    gap: tuple[float, float] = (0.0, 0.0)

    def cell(self, row: int, col: int) -> tuple[float, float, float, float]:
        """Normalised ``(x, y, w, h)`` of the 0-based cell ``(row, col)``."""
        left, top, right, bottom = self.margins
        cw = (1 - left - right - self.gap[0] * (self.cols - 1)) / self.cols
        ch = (1 - top - bottom - self.gap[1] * (self.rows - 1)) / self.rows
        if cw <= 0 or ch <= 0:
            raise InputError(f"margins {self.margins} and gaps {self.gap} leave no room for a {self.rows}x{self.cols} "
                             "grid", hint="use smaller margins/gaps (fractions of the frame, e.g. 0.02)")
        return (round(left + col * (cw + self.gap[0]), 4), round(top + row * (ch + self.gap[1]), 4),
                round(cw, 4), round(ch, 4))


def read_planogram(path: Path) -> list[tuple[str, str, int | None, int | None]]:
    """``(facing, sku, row, col)`` per line of a CSV with a header ``facing,sku[,row,col]``."""
    if not path.is_file():
        raise InputError(f"planogram table not found: {path}", hint="a CSV with a header: facing,sku[,row,col]")
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"facing", "sku"} <= set(rows[0]):
        raise InputError(f"{path}: needs a header with the columns facing and sku (optionally row and col)",
                         hint="e.g. facing,sku\\nslot-a1,Arla-Standard-Milk")
    out = []
    for i, r in enumerate(rows, start=2):
        facing, sku = (r.get("facing") or "").strip(), (r.get("sku") or "").strip()
        if not facing or not sku:
            raise InputError(f"{path}:{i}: facing and sku must not be empty")
        try:
            pos = [int(r[k]) if (r.get(k) or "").strip() else None for k in ("row", "col")]
        except ValueError as e:
            raise InputError(f"{path}:{i}: row and col must be whole numbers (1-based)") from e
        out.append((facing, sku, pos[0], pos[1]))
    return out


def grid_rois(grid: Grid, planogram: Sequence[tuple[str, str, int | None, int | None]]) -> list[RoiSettings]:
    """One region per planogram line: its cell (``row,col`` or the next cell row by row) and planned sku."""
    if len(planogram) > grid.rows * grid.cols:
        raise InputError(f"the planogram has {len(planogram)} facings but the grid only {grid.rows * grid.cols} "
                         "cells", hint="raise --rows/--cols")
    rois, used = [], set()
    for i, (facing, sku, row, col) in enumerate(planogram):
        r, c = (row - 1, col - 1) if row is not None and col is not None else divmod(i, grid.cols)
        if not (0 <= r < grid.rows and 0 <= c < grid.cols):
            raise InputError(f"facing {facing!r}: row {r + 1}, col {c + 1} is outside the {grid.rows}x{grid.cols} grid")
        if (r, c) in used:
            raise InputError(f"facing {facing!r}: cell row {r + 1}, col {c + 1} is already taken")
        used.add((r, c))
        rois.append(RoiSettings(name=facing, rect=grid.cell(r, c), expected_sku=sku))
    return rois


def rois_toml(rois: Sequence[RoiSettings]) -> str:
    """The regions as ``[[cameras.rois]]`` tables, to paste under the camera's ``[[cameras]]``."""
    lines = []
    for r in rois:
        lines += ["  [[cameras.rois]]", f"  name = {_q(r.name)}",
                  "  rect = [" + ", ".join(f"{v:.4f}" for v in r.rect) + "]", f"  expected_sku = {_q(r.expected_sku)}"]
    return "\n".join(lines) + "\n"


def _q(s: str | None) -> str:
    return '"' + (s or "").replace("\\", "\\\\").replace('"', '\\"') + '"'


def snapshot(settings: Any, camera: str, image: Path | None) -> np.ndarray:
    """One frame: ``image`` when given, else read from the camera's configured source."""
    cam = next((c for c in settings.cameras if c.name == camera), None)
    if cam is None:
        raise ConfigError(f"no camera {camera!r} in the config",
                          hint=f"use one of {[c.name for c in settings.cameras]}")
    if image is not None:
        frame = cv2.imread(str(image), cv2.IMREAD_COLOR)
        if frame is None:
            raise InputError(f"cannot read the image {image}", hint="pass a JPEG or PNG snapshot of the shelf")
        return frame
    from edge.pipeline.capture import open_source

    src = open_source(cam)
    try:
        frame = src.read()
    finally:
        src.close()
    if frame is None:
        raise InputError(f"camera {camera!r} gave no frame", hint="check its source, or pass --image SNAPSHOT")
    return frame


def enroll_facings(settings: Any, camera: str, frame: np.ndarray, rois: Sequence[RoiSettings]) -> dict[str, int]:
    """Each facing's crop of ``frame`` as a learned photo of its planned sku (a person set the planogram up, so
    nothing is held for review); counts of the outcomes. Every planned sku must be in the catalog."""
    from edge.catalog.learning import Learner
    from edge.catalog.store import Store
    from edge.models.encoders import load_image_encoder
    from edge.pipeline.crops import crop

    store = Store.from_settings(settings, image_encoder=load_image_encoder(settings.model), text_encoder=None)
    try:
        missing = sorted({r.expected_sku for r in rois if r.expected_sku and store.catalog.get(r.expected_sku) is None})
        if missing:
            raise InputError(f"planned products not in the catalog: {missing}",
                             hint="import them first (storelens catalog import), or fix the planogram table")
        # a person approved these crops (hold=False): the hold threshold is moot, so no "uncalibrated" warning
        learner = Learner(store, settings.learning.model_copy(update={"hold_below": -1.0}))
        counts: dict[str, int] = {}
        for r in rois:
            if r.expected_sku:
                got = learner.learn(r.expected_sku, crop(frame, r.rect), source="shelf-setup", ref=f"{camera}/{r.name}",
                                    hold=False)
                counts[got.outcome] = counts.get(got.outcome, 0) + 1
        return counts
    finally:
        store.close()


def register_setup(sub: Any) -> None:
    p = sub.add_parser("setup", help="planogram regions from a grid and a facing -> sku table, with an overlay",
                       epilog="example: storelens shelf setup -c shelf.toml --camera aisle4-left --planogram "
                              "planogram.csv --rows 2 --cols 4 --margins 0.02,0.05,0.02,0.05 --gap 0.01,0.1")
    p.add_argument("--config", "-c", type=Path, required=True)
    p.add_argument("--camera", required=True, help="the shelf camera's name in the config")
    p.add_argument("--planogram", type=Path, required=True, help="CSV: facing,sku[,row,col] (row/col 1-based)")
    p.add_argument("--rows", type=int, required=True)
    p.add_argument("--cols", type=int, required=True)
    p.add_argument("--margins", default="0,0,0,0", help="left,top,right,bottom as fractions of the frame")
    p.add_argument("--gap", default="0,0", help="x,y gap between cells as fractions of the frame")
    p.add_argument("--image", type=Path, default=None, help="use this snapshot instead of reading the camera")
    p.add_argument("--out", type=Path, default=None, help="write the [[cameras.rois]] TOML here (default: print)")
    p.add_argument("--overlay", type=Path, default=None, help="write the checked picture here "
                   "(default: shelf-setup-<camera>.png)")
    p.add_argument("--enroll", action="store_true", help="also add each facing's crop of the snapshot to the catalog "
                   "as a photo of its planned product (take the snapshot with the shelf fully stocked)")
    p.set_defaults(func=run_setup)


def _floats(text: str, n: int, what: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        vals = ()
    if len(vals) != n or not all(0 <= v < 1 for v in vals):
        raise InputError(f"--{what} needs {n} comma-separated fractions in [0, 1), got {text!r}")
    return vals


def run_setup(args: argparse.Namespace) -> int:
    if args.rows < 1 or args.cols < 1:
        raise InputError("--rows and --cols must be at least 1")
    m = _floats(args.margins, 4, "margins")
    g = _floats(args.gap, 2, "gap")
    grid = Grid(args.rows, args.cols, (m[0], m[1], m[2], m[3]), (g[0], g[1]))
    rois = grid_rois(grid, read_planogram(args.planogram))
    settings = load_settings(args.config)
    frame = snapshot(settings, args.camera, args.image)
    from edge.shelf.overlay import draw_facings

    overlay = args.overlay or Path(f"shelf-setup-{args.camera}.png")
    cv2.imwrite(str(overlay), draw_facings(frame, rois))
    text = rois_toml(rois)
    if args.enroll:
        counts = enroll_facings(settings, args.camera, frame, rois)
        print(f"enrolled the facings' crops: {counts} (learned = added; duplicate = the catalog had it already)",
              file=sys.stderr)
    if args.out is not None:
        args.out.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    print(f"{len(rois)} facings; check the regions in {overlay}"
          + (f"; paste {args.out} under [[cameras]] name = {args.camera!r}" if args.out else ""), file=sys.stderr)
    return 0
