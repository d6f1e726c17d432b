"""What ``storelens calibrate`` prints: the chosen thresholds in words a store owner can act on.

Rounded to what the data can tell (three decimals: a margin of 0.0005 is "no margin test"),
every rate also as counts ("8 of 15 photos"), a warning when the photos are too few for the
rates to mean much, and what the new calibration replaced (it is never replaced silently).
"""

from __future__ import annotations

from edge.core.types import Calibration
from edge.text.fusion import FusionWeights

FEW_KNOWN_PHOTOS = 50  # fewer photos of enrolled products than this: the acceptance rate is rough
FEW_UNKNOWN_PHOTOS = 20  # fewer photos of held-out products than this: the false-accept rate is rough
NO_MARGIN = 0.001  # a margin threshold below this tests nothing
FEW_CHECK_PHOTOS = 30  # fewer held-out photos than this checked the fusion weight: rough (edge.text.calibration)


def _share(rate: float, total: int) -> str:
    return f"{round(rate * total)} of {total} ({rate:.0%})"


def report_lines(cal: Calibration, *, previous: Calibration | None, stored: bool) -> list[str]:
    """The lines to print for a finished calibration (``previous``: the one stored before, if any)."""
    margin = (f"and a lead of at least {cal.margin:.3f} over the next product" if cal.margin >= NO_MARGIN
              else "(no margin test: the lead over the next product did not help)")
    lines = [f"a product is named when its score is at least {cal.score:.3f} {margin}",
             f"photos of enrolled products: {_share(cal.known_accept_rate, cal.known_queries)} named "
             f"(target {cal.target:.0%}); of those named, {cal.accepted_precision:.1%} were the right product "
             f"(top-1 before thresholds: {cal.known_top1_accuracy:.1%})"]
    wrong = _share(cal.false_accept_rate, cal.unknown_queries)
    lines.append(f"photos of products not in the catalog ({len(cal.held_out)} held out): {wrong} were wrongly "
                 "named as an enrolled product; the rest were called unknown")
    if cal.false_accept_rate > 0.2:
        lines.append("  -> unknown products are often named as a look-alike: photograph more angles of each "
                     "product (catalog add --image), or lower --target to reject more")
    if cal.known_queries < FEW_KNOWN_PHOTOS or cal.unknown_queries < FEW_UNKNOWN_PHOTOS:
        lines.append(f"warning: few photos ({cal.known_queries} of enrolled, {cal.unknown_queries} of held-out "
                     f"products; at least {FEW_KNOWN_PHOTOS} and {FEW_UNKNOWN_PHOTOS} are advised): these rates "
                     "are rough, one photo more or less moves them a lot")
    if previous is not None and stored:
        lines.append(f"replaced the previous calibration: score {previous.score:.3f}, margin {previous.margin:.3f} "
                     f"(catalog version {previous.catalog_version}, {previous.known_queries + previous.unknown_queries}"
                     " photos)")
    return lines


def previous_summary(previous: Calibration | None) -> dict[str, float | int] | None:
    """The replaced calibration for ``--json`` (None when there was none)."""
    if previous is None:
        return None
    return {"score": previous.score, "margin": previous.margin, "catalog_version": previous.catalog_version,
            "known_queries": previous.known_queries, "unknown_queries": previous.unknown_queries}


def fusion_lines(w: FusionWeights, before: FusionWeights, *, photos: int, dry_run: bool) -> list[str]:
    """What ``--fusion`` chose, how it did on the photos held out of its fit, and what it replaced."""
    m = w.metrics
    checked = int(m.get("check_queries", 0))
    where = f"{checked} held-out photos" if checked else f"the {photos} photos it was fitted on (none held out)"
    lines = [f"fusion: OCR weight {w.ocr:g}; recall@1 on {where}: "
             f"image only {m.get('check_image_r1', 0):.3f} -> with label text {m.get('check_fused_r1', 0):.3f}"]
    if "not used" in w.fitted_on:
        lines.append("fusion: the fitted weight lost on the held-out photos, so it is not used: the runtime stays "
                     "image only (label text did not help on these photos)")
    if checked < FEW_CHECK_PHOTOS:
        lines.append(f"fusion: warning: only {checked} held-out photos checked the weight (at least "
                     f"{FEW_CHECK_PHOTOS} advised: label more photos of each product; half of each product's "
                     "photos check it)")
    if dry_run:
        lines.append("fusion: dry run: not stored")
    elif before.ocr or before.metrics:
        lines.append(f"fusion: replaced the previous OCR weight {before.ocr:g} ({before.fitted_on})")
    return lines
