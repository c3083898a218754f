"""edge-agent: QR-code CIDs from a camera, a clip around each, delivered without loss."""

__version__ = "0.1.0"
