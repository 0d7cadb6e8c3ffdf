"""The test suite's fixtures and helpers live in ``tests/support``; these are its pytest plugins."""

pytest_plugins = [
    "tests.support.fixtures",
    "tests.support.erpnext_fixtures",
    "tests.support.api_cast",
]
