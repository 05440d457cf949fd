"""Headers the service's answers share: relative redirects, and the pages' security headers.

- A redirect to a URL's canonical form (``/docs`` to ``/docs/``, Werkzeug's
  strict slashes) names the path only: built from the request's ``Host``
  header, it would send a browser wherever a forged header says. The
  ``TRUSTED_HOSTS`` setting (Flask's) refuses other hosts outright (400).
- The API reference at ``/docs`` gets the console's security headers: a
  Content-Security-Policy that runs only the service's own scripts, and no
  framing by other sites (clickjacking the "Try it out" buttons).
"""

from __future__ import annotations

from flask import Flask, Response, request

# The console's pages and the API reference: only the service's own scripts and
# styles, no framing by other sites, no MIME sniffing, no referrer to other sites.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'; object-src 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
# Where the API reference's page and its files are served.
_DOCS_PREFIXES = ("/docs", "/docs-assets/", "/openapi.json")


def _relative_redirect(response: Response) -> Response:
    """Make a redirect to this service's own host name the path alone."""
    location = response.headers.get("Location")
    if location and 300 <= response.status_code < 400:
        own = request.host_url  # scheme://host/ as the request named it
        if location.startswith(own):
            response.headers["Location"] = "/" + location[len(own) :]
    return response


def _docs_headers(response: Response) -> Response:
    """The console's security headers on the API reference."""
    if request.path.startswith(_DOCS_PREFIXES):
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
    return response


def init_app(app: Flask) -> None:
    """Register the two hooks."""
    app.after_request(_relative_redirect)
    app.after_request(_docs_headers)
