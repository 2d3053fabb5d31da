"""Engines: where offsets, history and presence live (spec 08 §8)."""
