"""Where the variables of a URL rule are in a request's path.

A leaf module (the standard library only): a rule is read as the string Flask keeps
(``request.url_rule.rule``, ``"/reset/<token>"``, converters and their arguments included),
never through Werkzeug's routing objects, so that the tracker's copy of a request can be
filtered on the request thread from the rule's text alone.
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = ["SecretRules", "SecretVariables", "secret_variables"]

#: A variable of a rule: ``<name>``, ``<converter:name>``, ``<converter(arguments):name>``
#: (Werkzeug's syntax).
_VARIABLE = re.compile(
    r"<(?:(?P<converter>[a-zA-Z_][a-zA-Z0-9_]*)(?:\((?P<arguments>.*?)\))?:)?"
    r"(?P<name>[a-zA-Z_][a-zA-Z0-9_]*)>"
)


class SecretVariables:
    """The secret variables of one URL rule, found in the paths it matches."""

    __slots__ = ("_groups", "_matcher", "_prefix", "shape")

    def __init__(self, pattern: str, shape: str, groups: list[str], prefix: str) -> None:
        """``pattern``: the rule as a regex, each variable a named group; ``shape``: the same
        without groups (to be matched with others); ``groups``: the secret variables'
        groups; ``prefix``: the rule's text before its first secret variable."""
        self._matcher = re.compile(f"\\A{pattern}\\Z", re.DOTALL)
        self.shape = shape
        self._groups = groups
        self._prefix = prefix

    def filter(self, path: str, replacement: str) -> str:
        """``path``, which the rule matched, with each secret variable's value replaced. A
        path that does not follow the rule as written (a server merged or kept slashes) keeps
        its text up to the first secret variable, and the replacement stands for the rest; a
        path not even beginning so is replaced whole."""
        filtered = self.filter_if_matching(path, replacement)
        if filtered is not None:
            return filtered
        return self._prefix + replacement if path.startswith(self._prefix) else replacement

    def filter_if_matching(self, path: str, replacement: str) -> str | None:
        """``path`` with each secret variable's value replaced when it has the rule's shape
        (any path: a ``Referer``'s), else None."""
        found = self._matcher.match(path)
        if found is None:
            return None
        pieces = []
        kept_from = 0
        for group in self._groups:
            pieces += [path[kept_from : found.start(group)], replacement]
            kept_from = found.end(group)
        pieces.append(path[kept_from:])
        return "".join(pieces)


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
    position = 0
    for index, variable in enumerate(_VARIABLE.finditer(rule)):
        static = re.escape(_wsgi(rule[position : variable.start()]))
        converter = variable.group("converter")
        body = ".+?" if converter == "path" else "[^/]+"
        group = f"v{index}"
        pattern += [static, f"(?P<{group}>{body})"]
        shape += [static, body]
        if converter not in ("int", "float") and is_secret(variable.group("name")):
            groups.append(group)
            if prefix is None:
                prefix = _wsgi(rule[: variable.start()])
        position = variable.end()
    if prefix is None:
        return None
    static = re.escape(_wsgi(rule[position:]))
    return SecretVariables("".join([*pattern, static]), "".join([*shape, static]), groups, prefix)


class SecretRules:
    """The rules with secret variables an app has, matched together: a URL is tried against
    all of them in one regex match, however many there are."""

    __slots__ = ("_matcher", "_rules")

    def __init__(self, rules: tuple[SecretVariables, ...] = ()) -> None:
        self._rules = rules
        alternatives = "|".join(f"(?P<r{index}>{rule.shape})" for index, rule in enumerate(rules))
        self._matcher = re.compile(f"\\A(?:{alternatives})\\Z", re.DOTALL) if rules else None

    def with_rule(self, rule: SecretVariables) -> SecretRules:
        """These rules and ``rule`` (a new object: the matcher is compiled again)."""
        return SecretRules((*self._rules, rule))

    def filter_if_matching(self, path: str, replacement: str) -> str | None:
        """``path`` with the secret variables of the rule it has the shape of replaced, or
        None when it has the shape of none (:meth:`SecretVariables.filter_if_matching`)."""
        found = None if self._matcher is None else self._matcher.match(path)
        if found is None or found.lastgroup is None:
            return None
        return self._rules[int(found.lastgroup[1:])].filter_if_matching(path, replacement)


def _wsgi(text: str) -> str:
    """``text`` as a WSGI string carries it: its UTF-8 bytes as latin-1 characters."""
    return text if text.isascii() else text.encode("utf-8").decode("latin-1")
