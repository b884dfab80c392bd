"""The HTTP edge of actorflow: a Quart app (or blueprint) served by Hypercorn.

``create_app(runtime, resume_secret=..., base_url=...)`` builds the app of SPEC section 7;
``create_blueprint`` gives the same routes for a user's own Quart app; ``serve`` runs an app with
Hypercorn on the current event loop (``await tg.start(serve, app, bind="127.0.0.1:0")``) and
``run`` is its blocking form with signal handling, used by ``actorflow serve``. This package is
the only part of actorflow that imports Quart, Werkzeug or Hypercorn.
"""

from __future__ import annotations

from .app import PREFIX, MiB, Worker, create_app, create_blueprint
from .serve import bind_socket, run, serve, socket_url

__all__ = [
    "PREFIX",
    "MiB",
    "Worker",
    "bind_socket",
    "create_app",
    "create_blueprint",
    "run",
    "serve",
    "socket_url",
]
