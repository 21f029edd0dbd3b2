.PHONY: demo test unit lint mutate
demo:
	bash scripts/demo.sh
test:
	bash scripts/test.sh
unit:
	.venv/bin/python -m pytest -m "not e2e" -q
lint:
	.venv/bin/ruff check . && .venv/bin/mypy && .venv/bin/lint-imports
# Mutation testing of the modules that guard data ([tool.mutmut] in pyproject.toml), niced:
# `make mutate` for all of them, `make mutate MUTANTS='inference_endpoints.core.gc.*'` for one.
MUTANTS ?=
mutate:
	nice -n 15 .venv/bin/mutmut run --max-children 2 $(MUTANTS)
	.venv/bin/mutmut results
