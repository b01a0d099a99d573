"""densepred: reference experiment suite for general dense prediction (PolyMaX, MQTransformer)."""

__version__ = "0.1.0"
