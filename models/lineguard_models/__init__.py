"""LineGuard training toolkit (torch allowed here, never on the edge).

dataset folder -> pretrained backbone features -> anomaly model (good only) -> calibration ->
few-shot classifier -> ONNX export -> bundle (format and verification: ``lineguard.bundle``).
"""
