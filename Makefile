.PHONY: demo test unit lint
demo:
	bash scripts/demo.sh
test:
	bash scripts/test.sh
unit:
	.venv/bin/python -m pytest -m "not e2e" -q
lint:
	.venv/bin/ruff check . && .venv/bin/mypy
