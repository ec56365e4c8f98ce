"""Which views and blueprints are tracked: ``@tracking.include``/``@tracking.exclude`` marks and
``tracking.include_blueprint``/``exclude_blueprint`` rules, resolved once per endpoint.

No Flask globals and no I/O. A view is marked by an attribute on the function object (or the
class of a class-based view), so the mark works whatever the order of the decorators relative to
``@app.route`` and survives ``functools.wraps``. The verdict for an endpoint is worked out the
first time a request reaches it, from ``app.view_functions`` and ``app.blueprints``, and
remembered per app (:class:`EndpointVerdicts`).

Precedence, most specific first: the view's own mark, then the innermost blueprint with a rule
(``parent.child`` before ``parent``), then TRACKING_DEFAULT. Path rules (TRACKING_EXCLUDE,
TRACKING_INCLUDE) are decided before any of this, in the WSGI middleware, and always win.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable, TypeVar

INCLUDE = "include"
EXCLUDE = "exclude"
#: Attribute holding a view's mark (``"include"`` or ``"exclude"``).
MARK_ATTRIBUTE = "_flask_tracking_scope"
#: How many ``__wrapped__`` links are followed looking for a mark.
_MAX_WRAPPED_DEPTH = 32

View = TypeVar("View", bound=Callable[..., Any])


def mark_view(view: View, verdict: str) -> View:
    """Mark ``view`` (a view function, a bound method or a class-based view) and return it."""
    target = getattr(view, "__func__", view)  # bound methods take no attributes
    setattr(target, MARK_ATTRIBUTE, verdict)
    return view


def view_mark(view: Any) -> str | None:
    """The mark of a view function, looking through ``__wrapped__`` decorators and the
    ``view_class`` of class-based views; None when unmarked."""
    for _ in range(_MAX_WRAPPED_DEPTH):
        if view is None:
            return None
        mark = getattr(view, MARK_ATTRIBUTE, None)
        if mark is None:
            mark = getattr(getattr(view, "view_class", None), MARK_ATTRIBUTE, None)
        if mark in (INCLUDE, EXCLUDE):
            return mark  # type: ignore[no-any-return]
        view = getattr(view, "__wrapped__", None)
    return None


class EndpointVerdicts:
    """Whether each endpoint of one app is tracked, worked out at its first request.

    ``blueprint_rules`` maps a Blueprint object (whatever name it is registered under) or a
    registered blueprint name (dotted when nested: ``"parent.child"``) to ``"include"`` or
    ``"exclude"``. It is shared with the Tracking instance, which may add rules later and then
    calls :meth:`clear`. ``on_error()`` is called (inside ``except``) when working a verdict
    out fails; the endpoint is then tracked, so a bug of the tracker never loses records.
    The app is held weakly: the per-app state the extension keeps must not keep it alive.
    """

    __slots__ = ("_app", "_blueprint_rules", "_default", "cache", "on_error")

    def __init__(
        self,
        app: Any,
        blueprint_rules: dict[object, str],
        track_by_default: bool,
        on_error: Callable[[], None] | None = None,
    ) -> None:
        self._app = weakref.ref(app)
        self._blueprint_rules = blueprint_rules
        self._default = track_by_default
        self.on_error = on_error
        #: endpoint -> tracked? (read directly on the request path, which is hot).
        self.cache: dict[str, bool] = {}

    def tracks(self, endpoint: str) -> bool:
        """Whether requests routed to ``endpoint`` are tracked (cached)."""
        verdict = self.cache.get(endpoint)
        return self.resolve_and_cache(endpoint) if verdict is None else verdict

    def resolve_and_cache(self, endpoint: str) -> bool:
        """:meth:`resolve`, remembered for the next request to ``endpoint``."""
        try:
            verdict = self.resolve(endpoint)
        except Exception:
            if self.on_error is None:
                raise
            self.on_error()
            verdict = True
        self.cache[endpoint] = verdict
        return verdict

    def resolve(self, endpoint: str) -> bool:
        """Work the verdict out: the view's mark, else the innermost blueprint rule, else the
        default."""
        app = self._app()
        if app is None:
            return self._default
        mark = view_mark(app.view_functions.get(endpoint))
        if mark is not None:
            return mark == INCLUDE
        rules = self._blueprint_rules
        if rules:
            blueprints = app.blueprints
            name = endpoint.rpartition(".")[0]
            while name:
                rule = rules.get(name)
                if rule is None:
                    blueprint = blueprints.get(name)
                    rule = None if blueprint is None else rules.get(blueprint)
                if rule is not None:
                    return rule == INCLUDE
                name = name.rpartition(".")[0]
        return self._default

    def clear(self) -> None:
        """Forget every verdict (a rule changed)."""
        self.cache.clear()
