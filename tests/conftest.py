"""Fixtures live in tests/fix_*.py (one file per service); markers are registered in pyproject.toml."""

pytest_plugins = ["tests.fix_kafka", "tests.fix_pg", "tests.fix_procs"]
