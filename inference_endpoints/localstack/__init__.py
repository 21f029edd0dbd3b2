"""Local-stack tooling (start/stop the stack, build the demo checkpoint); not part of the product core."""
