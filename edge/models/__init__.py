"""Model bundles, the one image preprocessing, and the encoders that run them (onnxruntime, OpenVINO)."""
