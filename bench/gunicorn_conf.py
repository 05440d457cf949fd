"""gunicorn settings of the benchmark's servers (the schema is made by the benchmark itself)."""

import os

bind = os.environ["BENCH_BIND"]
workers = int(os.environ.get("BENCH_WORKERS", "2"))
threads = int(os.environ.get("BENCH_THREADS", "4"))
worker_class = "gthread"
accesslog = None
loglevel = "warning"
timeout = 60
