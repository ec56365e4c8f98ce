"""Where the variables of a URL rule are in a request's path.

A leaf module (the standard library only): a rule is read as the string Flask keeps
(``request.url_rule.rule``, ``"/reset/<token>"``, converters and their arguments included),
never through Werkzeug's routing objects, so that the tracker's copy of a request can be
filtered on the request thread from the rule's text alone.
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = ["SecretVariables", "secret_variables"]

#: A variable of a rule: ``<name>``, ``<converter:name>``, ``<converter(arguments):name>``
#: (Werkzeug's syntax).
_VARIABLE = re.compile(
    r"<(?:(?P<converter>[a-zA-Z_][a-zA-Z0-9_]*)(?:\((?P<arguments>.*?)\))?:)?"
    r"(?P<name>[a-zA-Z_][a-zA-Z0-9_]*)>"
)


class SecretVariables:
    """The secret variables of one URL rule, found in the paths it matches."""

    __slots__ = ("_groups", "_matcher", "_prefix")

    def __init__(self, matcher: re.Pattern[str], groups: list[str], prefix: str) -> None:
        self._matcher = matcher
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
    the rule's text is read in the same form. A ``path`` variable runs over slashes; every other
    converter stops at one (an ``int`` is read as any text: a secret must not be kept for
    a converter's sake).
    """
    pattern = ["\\A"]
    groups = []
    prefix = None
    position = 0
    for index, variable in enumerate(_VARIABLE.finditer(rule)):
        pattern.append(re.escape(_wsgi(rule[position : variable.start()])))
        group = f"v{index}"
        body = ".+?" if variable.group("converter") == "path" else "[^/]+"
        pattern.append(f"(?P<{group}>{body})")
        if is_secret(variable.group("name")):
            groups.append(group)
            if prefix is None:
                prefix = _wsgi(rule[: variable.start()])
        position = variable.end()
    if prefix is None:
        return None
    pattern.append(re.escape(_wsgi(rule[position:])) + "\\Z")
    return SecretVariables(re.compile("".join(pattern), re.DOTALL), groups, prefix)


def _wsgi(text: str) -> str:
    """``text`` as a WSGI string carries it: its UTF-8 bytes as latin-1 characters."""
    return text if text.isascii() else text.encode("utf-8").decode("latin-1")
