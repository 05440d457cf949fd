"""gunicorn settings of the bare Flask app (bench/plain_app.py): the project's, without its hooks.

The baseline is served as the service is (``gunicorn.conf.py``): the same bind
variable, workers, threads, worker class, timeouts and logging (its access log
on stdout included), so that gunicorn's own cost is the same on both sides.
Left out: the hooks that migrate the service's database and start its worker,
and the delivery processes, which the bare app has no use for.
"""

import runpy
from pathlib import Path

_project = runpy.run_path(str(Path(__file__).resolve().parent.parent / "gunicorn.conf.py"))

bind = _project["bind"]
# Named after its address, with a control socket of its own, as the project's servers.
proc_name = _project.get("proc_name")
control_socket = _project.get("control_socket")
workers = _project["workers"]
threads = _project["threads"]
worker_class = _project["worker_class"]
timeout = _project["timeout"]
graceful_timeout = _project["graceful_timeout"]
accesslog = _project["accesslog"]
logger_class = _project["logger_class"]
limit_request_line = _project["limit_request_line"]
