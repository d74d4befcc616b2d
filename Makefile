# Two entry points (see README): `make demo` and `make test`. Both set up .venv first.
.PHONY: setup setup-dev browser demo test lint bench docs

setup:
	bash scripts/setup.sh

setup-dev:
	bash scripts/setup.sh dev

# Debian's chromium for the browser test of `vaelens report` (does nothing when it is there)
browser:
	bash scripts/install_browser.sh

demo: setup
	.venv/bin/vaelens explain sdxl --size 1024x1024

test: setup-dev browser
	.venv/bin/python -m pytest

lint: setup-dev
	.venv/bin/ruff check src tests benchmarks

# The docs site (docs/*.md, mkdocs.yml) into site/; strict: a broken link or missing page is an error.
# Preview while editing: .venv/bin/mkdocs serve
docs: setup-dev
	.venv/bin/mkdocs build --strict
