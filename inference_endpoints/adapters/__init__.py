"""Adapters to the outside world: engine runtimes, gateway, console and API, metrics, CLI."""
