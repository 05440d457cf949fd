"""Benchmarks of the service's hot paths; run them with ``make bench`` (``python -m bench``).

See ``bench/README.md`` for what is measured and the latest numbers.
"""
