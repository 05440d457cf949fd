"""``python -m bench``: run the benchmarks and print a table."""

from bench.run import main

raise SystemExit(main())
