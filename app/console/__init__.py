"""The operator console: server-rendered pages at ``/console/`` for people, beside the API.

Jinja templates render every page; htmx (vendored in ``static/``, with its
license) polls the parts that change: the stats and reset progress of the
connectors on a pipeline page, one request for the page (``static/console.js``
skips polls while the tab is hidden). Every button goes through the same
services as the API (pipelines, connectors, resets), acting for the tenant of
the API key the operator signed in with.

Sign-in, the session cookie, CSRF tokens and the role each page needs live in
:mod:`app.console.access`; the pages in :mod:`app.console.views`; what a page
shows of its connectors, loaded a page at a time in a few statements, in
:mod:`app.console.panels`.

``static/htmx-2.0.11.min.js`` is ``dist/htmx.min.js`` of the ``htmx.org``
package, version 2.0.11, unchanged (SHA-256 below, checked by
tests/test_console.py); its license (Zero-Clause BSD) is
``static/htmx-LICENSE.txt``. To update it, replace both from the new release
and change the file name in ``templates/console/base.html`` and the hash here.
"""

from __future__ import annotations

from flask import Flask

HTMX_FILE = "htmx-2.0.11.min.js"
HTMX_SHA256 = "d6fdc75f204e6bdefa99b69bf1e6d4ac69b8a364f77929f45c13476b4000f717"


def init_app(app: Flask) -> None:
    """Mount the console at ``/console/``."""
    from app.console.views import bp

    app.register_blueprint(bp)
