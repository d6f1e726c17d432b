"""Deciding on the crops learning held for review: approve (learn it after all) or discard.

A crop is held when its best cosine to the product's photos is below the hold threshold (or
nothing is calibrated): the confirmation is more likely wrong than the crop new. A person who
looked at it (``storelens catalog learned --held`` lists them, with the file) approves or
discards it here; either way it leaves the review. Kept beside :mod:`edge.catalog.learning`
(whose tables and lock it uses) so that module stays readable.
"""

from __future__ import annotations

import logging

import cv2

from edge.catalog.learning import Learner, LearnResult, unlink_files
from edge.core.errors import ImageError, InputError
from edge.core.sqlite import transaction

log = logging.getLogger("storelens.learning")


def review_held(learner: Learner, review_id: str, *, approve: bool) -> LearnResult | None:
    """Approve a held crop (learned as a photo of its sku: a person looked, so its low cosine does not hold it
    again; a duplicate still adds nothing; over the hourly limit it stays held) or discard it. Returns the
    approval's result (None for a discard); :class:`InputError` for an id that is not held."""
    db = learner._db  # the learning tables' connection (edge.catalog.learning)
    row = db.execute("SELECT sku, source, ref, ts, file FROM learning_review WHERE id = ?", (review_id,)).fetchone()
    if row is None:
        raise InputError(f"no held crop {review_id!r}", hint="`storelens catalog learned --held` lists their ids")
    sku, source, ref, ts, name = row
    result = None
    if approve:
        crop = cv2.imread(str(learner.review_dir / name))
        if crop is None:
            raise ImageError(f"the held crop file {learner.review_dir / name} is missing or unreadable",
                             hint="discard it instead (--discard)")
        result = learner.learn(str(sku), crop, source=str(source), ref=ref, ts=float(ts), hold=False)
        if result.outcome == "limited":
            return result  # still held: approve it again after the hour
    with learner._lock, transaction(db) as tx:
        tx.execute("DELETE FROM learning_review WHERE id = ?", (review_id,))
    unlink_files([learner.review_dir / name])
    log.info("held crop reviewed", extra={"id": review_id, "sku": sku, "approved": approve,
                                          "outcome": result.outcome if result else "discarded"})
    return result
