"""StoreLens export stage: train, export, quantize and bundle encoders (build-time only).

May import torch (the ``export`` extra) and ``edge`` (to share the bundle format and the
preprocessing, so that training, calibration and the runtime can never disagree).
"""
