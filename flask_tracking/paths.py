"""The pages of an app whose URL rules have secret variables (``/reset/<token>``), and the
filtering of the paths that name them: a request's own path, and the path of a URL (a
``Referer``, a ``Location``, a page's link, a sign-in page's ``next=`` value).

Nothing here touches Flask: :class:`SecretPaths` is given the texts of the app's rules (all of
them at its first request, and any rule a request matched that it has not seen), and the
prefixes the app is mounted at (``SCRIPT_NAME``). A rule's text is read by
:mod:`flask_tracking.rules`.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable
from urllib.parse import quote, unquote_plus

from .rules import SecretRules, SecretVariables, secret_variables, wsgi_text

__all__ = ["URL_VALUE_STARTS", "SecretPaths"]

#: How a query parameter's value that may be a URL begins: a path, a scheme, or either encoded.
URL_VALUE_STARTS = frozenset("/%hH")
# What a URL written again as a parameter's value keeps as it is (FILTERED's brackets too).
_URL_VALUE_SAFE = "/:@!$'()*,;[]"
_SLASHES = re.compile(r"//+")
# Rules remembered (an app has a fixed number; more are forgotten and learnt again).
_MAX_RULES = 4096
_MAX_SCRIPT_NAMES = 8


class SecretPaths:
    """An app's URL rules as far as their secret variables go, learnt as they are met.

    Read without a lock on the request path: :attr:`variables` (each rule's secret variables,
    None for a rule without any), :attr:`rules` (those with some, matched together; None
    while there is none, so that a test costs no call), :attr:`script_names` and the paths of
    the rules without variables. They are changed under a lock, each replaced or added to in
    one step.
    """

    def __init__(self, is_secret: Callable[[str], bool], replacement: str) -> None:
        """``is_secret``: whether a variable's name is secret; ``replacement``: what a secret
        variable's value is replaced with."""
        self._is_secret = is_secret
        self._replacement = replacement
        self.variables: dict[str, SecretVariables | None] = {}
        self.rules: SecretRules | None = None
        self.script_names: tuple[str, ...] = ()  # where the app is mounted, when not at /
        self._static_paths: frozenset[str] = frozenset()  # the rules without variables
        self._generation = 0  # rules remembered so far: a matcher built meanwhile is stale
        self._lock = threading.Lock()

    def learn_rules(self, rules: Iterable[str]) -> None:
        """Know an app's rules, so that a URL naming one of its pages with a secret variable
        has its path filtered as the page's own is (see :meth:`url_path`). A rule without
        variables names a page of its own: a URL of exactly its path is kept.

        The slow parts (reading each rule, building the matcher of them all: a quarter of a
        second for 1,500 rules with secret variables) run outside the lock, so a request
        thread that meets a new rule meanwhile (:meth:`variables_of`) never waits for them."""
        read = [(rule, secret_variables(rule, self._is_secret)) for rule in rules]
        with self._lock:
            for rule, variables in read:
                if rule not in self.variables:
                    self._remember(rule, variables)
            found = self._found()
            generation = self._generation
        matcher = SecretRules(found) if found else None
        with self._lock:
            if generation == self._generation:
                self.rules = matcher
            else:  # a request thread learnt a rule meanwhile: its matcher has it, not ours
                self._gather()

    def variables_of(self, rule: str) -> SecretVariables | None:
        """The secret variables of ``rule``, worked out once (request threads may ask for the
        same new rule at once: the first one learns it)."""
        with self._lock:
            new = rule not in self.variables
            variables = self._learn(rule)
            if new and variables is not None:
                self._gather()
            return variables

    def learn_script_name(self, script_name: str) -> None:
        """Remember a prefix the app is mounted at (``SCRIPT_NAME``): its URLs begin with it
        (a few at most; more are not remembered)."""
        with self._lock:
            known = self.script_names
            if len(known) < _MAX_SCRIPT_NAMES and len(script_name) <= 256:
                self.script_names = (*known, script_name) if script_name not in known else known

    def path_of_no_rule(self, path: str) -> str:
        """A request's path that no rule matched (a 404, 405, or a slash redirect), filtered
        by the rule with secret variables it has the shape of, if any."""
        rules = self.rules
        filtered = None if rules is None else self._shape_filtered(path, rules)
        return path if filtered is None else filtered

    def url_path(self, url: str) -> str:
        """``url`` with its path filtered when it has the shape of a known rule with secret
        variables: an absolute URL, one without its scheme (``//host/...``) or a path; its
        query and fragment are kept as they are. A last slash the rule does not have is
        allowed, and a prefix the app is mounted at."""
        rules = self.rules
        if rules is None:
            return url
        double = url.find("//")
        if double == 0 or (double > 0 and url[double - 1] == ":" and url[: double - 1].isalnum()):
            start = url.find("/", double + 2)  # after the host
        else:
            start = 0 if url.startswith("/") else -1
        if start < 0:
            return url
        end = len(url)
        for mark in ("?", "#"):
            at = url.find(mark, start)
            if 0 <= at < end:
                end = at
        path = url[start:end]
        if path in self._static_paths:  # a page of its own (/about beside /<key>)
            return url
        filtered = self._path_filtered(path, rules, self.script_names)
        return url if filtered is None else url[:start] + filtered + url[end:]

    def url_value(self, value: str) -> str:
        """A query parameter's value (as sent) that is a URL naming a page with secret rule
        variables (a sign-in page's ``next=/confirm/<token>``, percent-encoded or not), its
        path filtered (:meth:`url_path`) and written percent-encoded; any other value as it
        is."""
        rules = self.rules
        url = unquote_plus(value, errors="surrogateescape")  # bytes not UTF-8 kept as they are
        if rules is None or not rules.named_in_text(url):  # a search, not a URL's reading
            return value
        filtered = self.url_path(url)
        return (
            value if filtered == url else quote(filtered, _URL_VALUE_SAFE, errors="surrogateescape")
        )

    def _learn(self, rule: str) -> SecretVariables | None:
        """``rule``'s secret variables, remembered (under the lock)."""
        known = self.variables
        if rule in known:
            return known[rule]
        return self._remember(rule, secret_variables(rule, self._is_secret))

    def _remember(self, rule: str, variables: SecretVariables | None) -> SecretVariables | None:
        """Remember ``rule`` (not known yet) and its secret ``variables`` (under the lock)."""
        known = self.variables
        if len(known) >= _MAX_RULES:
            known.clear()
        known[rule] = variables
        self._generation += 1
        if "<" not in rule and len(self._static_paths) < _MAX_RULES:
            self._static_paths = self._static_paths | {wsgi_text(rule)}
        return variables

    def _found(self) -> list[SecretVariables]:
        """The rules with secret variables known (under the lock)."""
        return [found for found in self.variables.values() if found is not None]

    def _gather(self) -> None:
        """The rules with secret variables, matched together (under the lock)."""
        found = self._found()
        self.rules = SecretRules(found) if found else None

    def _shape_filtered(self, path: str, rules: SecretRules) -> str | None:
        """``path`` filtered as the rule with secret variables it has the shape of would
        filter it, read as the router reads it: as it is, with its slashes merged (a last one
        kept), or with one added (``/reset//<token>/``, ``/confirm/<token>`` for a rule ending
        in a slash: the router answers those with a redirect); None when it has no rule's
        shape."""
        replacement = self._replacement
        filtered = rules.filter_if_matching(path, replacement)
        if filtered is not None:
            return filtered
        merged = _SLASHES.sub("/", path) if "//" in path else path
        stripped = merged.rstrip("/") or "/"
        filtered = None if stripped == path else rules.filter_if_matching(stripped, replacement)
        if filtered is not None:
            return filtered + merged[len(stripped) :]
        filtered = rules.filter_if_matching(stripped + "/", replacement)
        # The slash added is taken back; one a variable took in shows nothing of the path.
        return filtered[:-1] if filtered is not None and filtered.endswith("/") else None

    def _path_filtered(
        self, path: str, rules: SecretRules, script_names: tuple[str, ...]
    ) -> str | None:
        """:meth:`url_path` of a path: as the router reads it (:meth:`_shape_filtered`), or
        after one of the prefixes the app is mounted at; None when no rule has its shape."""
        filtered = self._shape_filtered(path, rules)
        if filtered is None:  # a URL of the app under the prefix it is mounted at?
            for prefix in script_names:
                mounted = prefix.rstrip("/")
                if path.startswith(mounted) and path[len(mounted) : len(mounted) + 1] == "/":
                    filtered = self._path_filtered(path[len(mounted) :], rules, ())
                    if filtered is not None:
                        return mounted + filtered
        return filtered
