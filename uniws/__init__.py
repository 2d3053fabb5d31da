"""uniws: a Centrifugo v3 compatible unidirectional WebSocket messaging server."""

__version__ = "0.1.0"
