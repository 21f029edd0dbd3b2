"""`python -m inference_endpoints.cli …` is `endpoints …` (handy where the script is not installed)."""

from inference_endpoints.cli import app

app(prog_name="endpoints")
