"""Inference Endpoints: serve a fine-tuned checkpoint at a stable, health-checked URL."""

__version__ = "0.1.0"
