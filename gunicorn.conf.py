"""gunicorn settings for ``make serve``; every value can be overridden on the command line."""

import multiprocessing
import os

bind = os.environ.get("PIPELINE_MANAGER_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("PIPELINE_MANAGER_WORKERS", min(4, multiprocessing.cpu_count() * 2)))
threads = int(os.environ.get("PIPELINE_MANAGER_THREADS", 4))
worker_class = "gthread"
timeout = 60
graceful_timeout = 20
accesslog = "-"
# gunicorn answers longer request lines itself (414, not the service's error
# body); 8190 is its maximum, far above any real request (tokens are ~150 bytes).
limit_request_line = 8190


def on_starting(server):
    """Bring the database schema up to date once, before any worker starts."""
    from flask_migrate import upgrade

    from app import create_app

    app = create_app()
    with app.app_context():
        upgrade()


def post_worker_init(worker):
    """Start the worker process's background worker thread (resets, delivery)."""
    from app.worker import start_background

    start_background(worker.wsgi)
