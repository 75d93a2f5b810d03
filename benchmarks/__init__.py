"""crossent benchmark suites; run ``python -m benchmarks --help`` (API in ``harness``)."""
