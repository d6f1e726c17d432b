"""OCR: the engine (rapidocr), the background worker with its per-ROI cache, and the child process."""
