"""Encoders: batch in, L2-normalised float32 vectors out, behind one interface per modality."""
