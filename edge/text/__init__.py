"""Label text: OCR off ROI crops, per-product word profiles, and the fusion of text with image scores."""
