"""A web dashboard to watch and steer a service's jobs in the browser.

Sits on top of the framework, beside the CLI: it reads OADA with the client
and acts only through the framework's public functions (``post_job``,
``request_cancel``, the layout paths, the reports' counting). Nothing in the
framework imports it. See ``docs/dashboard.md``.

>>> app = create_dashboard_app("http://127.0.0.1:8080", token)  # doctest: +SKIP

Needs the ``dashboard`` extra (Jinja2, itsdangerous): ``pip install 'oada-jobs[dashboard]'``.
"""

from __future__ import annotations

from .app import create_dashboard_app
from .config import DashboardConfig
from .security import BindRefused, check_bind
from .serve import DashboardHandle, serve_dashboard

__all__ = [
    "BindRefused",
    "DashboardConfig",
    "DashboardHandle",
    "check_bind",
    "create_dashboard_app",
    "serve_dashboard",
]
