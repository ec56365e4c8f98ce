"""Where the variables of a URL rule are in a request's path.

A leaf module (the standard library only): a rule is read as the string Flask keeps
(``request.url_rule.rule``, ``"/reset/<token>"``, converters and their arguments included),
never through Werkzeug's routing objects, so that the tracker's copy of a request can be
filtered on the request thread from the rule's text alone.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

__all__ = [
    "MAX_MULTI_PATH_LENGTH",
    "MAX_PATH_LENGTH",
    "SecretRules",
    "SecretVariables",
    "secret_variables",
    "wsgi_text",
]

#: Longest path (in characters) read for a rule's variables; a longer one is not matched.
MAX_PATH_LENGTH = 4096
#: The same for a rule with two ``path`` variables or more.
MAX_MULTI_PATH_LENGTH = 256

#: A variable of a rule: ``<name>``, ``<converter:name>``, ``<converter(arguments):name>``
#: (Werkzeug's syntax).
_VARIABLE = re.compile(
    r"<(?:(?P<converter>[a-zA-Z_][a-zA-Z0-9_]*)(?:\((?P<arguments>.*?)\))?:)?"
    r"(?P<name>[a-zA-Z_][a-zA-Z0-9_]*)>"
)


class SecretVariables:
    """The secret variables of one URL rule, found in the paths it matches."""

    __slots__ = ("_groups", "_lead", "_matcher", "_prefix", "max_length", "shape")

    def __init__(
        self, pattern: str, shape: str, groups: list[str], prefix: str, lead: str, paths: int
    ) -> None:
        """``pattern``: the rule as a regex, each variable a named group; ``shape``: the same
        without groups (to be matched with others); ``groups``: the secret variables'
        groups; ``prefix``: the rule's text before its first secret variable; ``lead``:
        before its first variable; ``paths``: how many ``path`` variables it has."""
        self._matcher = re.compile(f"\\A{pattern}\\Z", re.DOTALL)
        self.shape = shape
        self._groups = groups
        self._prefix = prefix
        self._lead = lead
        #: The longest path read: two ``path`` variables make a match cost the square of the
        #: path's length, so such a rule reads no more than :data:`MAX_MULTI_PATH_LENGTH`.
        self.max_length = MAX_PATH_LENGTH if paths < 2 else MAX_MULTI_PATH_LENGTH

    def filter(self, path: str, replacement: str) -> str:
        """``path``, which the rule matched, with each secret variable's value replaced. A
        path that does not follow the rule as written (a server merged or kept slashes), or
        longer than it reads (:attr:`max_length`), keeps its text up to the first secret variable,
        and the replacement stands for the rest; a path not even beginning so is replaced
        whole."""
        filtered = _replaced(path, self.secret_spans(path), replacement)
        if filtered is not None:
            return filtered
        return self._prefix + replacement if path.startswith(self._prefix) else replacement

    def secret_spans(self, path: str) -> list[tuple[int, int]]:
        """Where the secret variables' values are in ``path`` when it has the rule's shape
        (any path: a ``Referer``'s), else nothing. A path longer than :attr:`max_length` is
        not read."""
        if len(path) > self.max_length or not path.startswith(self._lead):
            return []
        found = self._matcher.match(path)
        return [] if found is None else [found.span(group) for group in self._groups]


def secret_variables(rule: str, is_secret: Callable[[str], bool]) -> SecretVariables | None:
    """The variables of ``rule`` whose names ``is_secret`` (``/reset/<token>``), to be found in
    paths; None when there is none.

    A path is matched as the WSGI ``PATH_INFO`` carries it (UTF-8 as latin-1 characters), and
    the rule's text is read in the same form. A ``path`` variable runs over slashes; every
    other converter stops at one. A number (``<int:card_id>``, ``<float:...>``) is no secret:
    ids are not credentials.
    """
    pattern, shape = [], []
    groups = []
    prefix = None
    position = paths = 0
    for index, variable in enumerate(_VARIABLE.finditer(rule)):
        static = re.escape(wsgi_text(rule[position : variable.start()]))
        converter = variable.group("converter")
        paths += converter == "path"
        body = ".+?" if converter == "path" else "[^/]+"
        group = f"v{index}"
        pattern += [static, f"(?P<{group}>{body})"]
        shape += [static, body]
        if converter not in ("int", "float") and is_secret(variable.group("name")):
            groups.append(group)
            if prefix is None:
                prefix = wsgi_text(rule[: variable.start()])
        position = variable.end()
    if prefix is None:
        return None
    static = re.escape(wsgi_text(rule[position:]))
    first = _VARIABLE.search(rule)
    lead = wsgi_text(rule[: first.start()]) if first is not None else ""
    return SecretVariables(
        "".join([*pattern, static]), "".join([*shape, static]), groups, prefix, lead, paths
    )


class SecretRules:
    """The rules with secret variables an app has, matched together: a URL is first tried
    against all of them in one regex (without groups, so that the compiler merges what their
    beginnings share), and only a URL of their shape is read rule by rule: every rule it has
    the shape of filters its secret variables (two rules may overlap)."""

    __slots__ = ("_any", "_rules", "_slow_rules")

    def __init__(self, rules: Sequence[SecretVariables]) -> None:
        self._rules = tuple(rules)
        # A rule with two path variables is read alone, within its shorter length.
        fast = [rule.shape for rule in self._rules if rule.max_length == MAX_PATH_LENGTH]
        self._any = re.compile(f"\\A(?:{'|'.join(fast)})\\Z", re.DOTALL) if fast else None
        self._slow_rules = tuple(rule for rule in self._rules if rule.max_length < MAX_PATH_LENGTH)

    def filter_if_matching(self, path: str, replacement: str) -> str | None:
        """``path`` with the secret variables of every rule it has the shape of replaced, or
        None when it has the shape of none (or is longer than the rules read)."""
        if len(path) > MAX_PATH_LENGTH:
            return None
        # A path of none of the fast rules' shapes can only have a slow rule's.
        fits = self._any is not None and self._any.match(path) is not None
        candidates = self._rules if fits else self._slow_rules
        spans = [span for rule in candidates for span in rule.secret_spans(path)]
        return _replaced(path, spans, replacement)


def _replaced(path: str, spans: list[tuple[int, int]], replacement: str) -> str | None:
    """``path`` with the text of ``spans`` (overlapping or not) replaced, each run of joined
    spans by one ``replacement``; None without a span."""
    if not spans:
        return None
    pieces = []
    kept_from = 0
    start, end = -1, -1
    for span_start, span_end in sorted(spans):
        if span_start > end:  # a new run
            if end >= 0:
                pieces += [path[kept_from:start], replacement]
                kept_from = end
            start = span_start
        end = max(end, span_end)
    pieces += [path[kept_from:start], replacement, path[end:]]
    return "".join(pieces)


def wsgi_text(text: str) -> str:
    """``text`` as a WSGI string carries it: its UTF-8 bytes as latin-1 characters."""
    return text if text.isascii() else text.encode("utf-8").decode("latin-1")
