"""Metrics: a real Prometheus, service discovery, the accelerator exporter, PromQL and series.

Prometheus scrapes every live engine's vLLM `/metrics`, the gateway and each serve
run's accelerator exporter; the console, the API and `endpoints metrics` read the
same series through `series.py`.
"""
