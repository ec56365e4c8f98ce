"""Where the variables of a URL rule are in a request's path.

A leaf module (the standard library only): a rule is read as the string Flask keeps
(``request.url_rule.rule``, ``"/reset/<token>"``, converters and their arguments included),
never through Werkzeug's routing objects, so that the tracker's copy of a request can be
filtered on the request thread from the rule's text alone.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from itertools import groupby

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
#: The same for a rule whose variables can share text (:attr:`SecretVariables.max_length`).
MAX_MULTI_PATH_LENGTH = 256

#: The length of a rule's lead (:attr:`SecretVariables.lead`) searched for in a page: enough to
#: tell rules apart, and a bound on the depth of :func:`_alternation`.
_LEAD_SEARCHED = 64
#: A character beyond ASCII (written in more than one form in URLs, :func:`_static`).
_NOT_ASCII = re.compile(r"[^\x00-\x7f]")
#: A variable of a rule: ``<name>``, ``<converter:name>``, ``<converter(arguments):name>``
#: (Werkzeug's syntax).
_VARIABLE = re.compile(
    r"<(?:(?P<converter>[a-zA-Z_][a-zA-Z0-9_]*)(?:\((?P<arguments>.*?)\))?:)?"
    r"(?P<name>[a-zA-Z_][a-zA-Z0-9_]*)>"
)


class SecretVariables:
    """The secret variables of one URL rule, found in the paths it matches."""

    __slots__ = ("_groups", "_matcher", "_prefix", "lead", "max_length", "shape", "slashes")

    def __init__(
        self,
        pattern: str,
        shape: str,
        groups: list[str],
        prefix: str,
        lead: str,
        ambiguous: bool,
        slashes: int | None,
    ) -> None:
        """``pattern``: the rule as a regex, each variable (or run of variables side by side)
        a named group; ``shape``: the same without groups, to be matched with others (a run
        of variables only roughly); ``groups``: the secret ones' groups; ``prefix``: the
        rule's text before its first secret variable; ``lead``: before its first variable;
        ``ambiguous``: whether two of its variables can share text (two ``path`` variables,
        or a ``path`` variable side by side with another); ``slashes``: the number of slashes
        in every path the rule matches (None: it has a ``path`` variable)."""
        self._matcher = re.compile(f"\\A{pattern}\\Z", re.DOTALL)
        self.shape = shape
        self._groups = groups
        self._prefix = prefix
        #: The rule's text before its first variable, up to a character beyond ASCII: every
        #: form of a URL of the rule begins with it.
        self.lead = lead
        #: The longest path read: variables that can share text make a match cost the square
        #: of the path's length, so such a rule reads no more than :data:`MAX_MULTI_PATH_LENGTH`.
        self.max_length = MAX_MULTI_PATH_LENGTH if ambiguous else MAX_PATH_LENGTH
        #: How many slashes every path of the rule has (a variable holds none), None when a
        #: ``path`` variable can hold some.
        self.slashes = slashes

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
        if len(path) > self.max_length or not path.startswith(self.lead):
            return []
        found = self._matcher.match(path)
        return [] if found is None else [found.span(group) for group in self._groups]


def secret_variables(rule: str, is_secret: Callable[[str], bool]) -> SecretVariables | None:
    """The variables of ``rule`` whose names ``is_secret`` (``/reset/<token>``), to be found in
    paths; None when there is none.

    A path is matched as the WSGI ``PATH_INFO`` carries it (UTF-8 as latin-1 characters), and
    the rule's text is read in the same form, or percent-encoded as in a URL, or as a page's
    text has it (:func:`_static`). A ``path`` variable runs over slashes; every
    other converter stops at one. A number (``<int:card_id>``, ``<float:...>``) is no secret:
    ids are not credentials. Variables side by side in one segment (``/<uid>-<token>``,
    ``/<token>.<format>``) are one value: where one ends depends on the router's choice, so
    the run is filtered whole when one of them is secret, and it is matched in linear time
    (:func:`_run_patterns`).
    """
    found = list(_VARIABLE.finditer(rule))
    edges = [0, *(edge for variable in found for edge in variable.span()), len(rule)]
    statics = [rule[edges[at] : edges[at + 1]] for at in range(0, len(edges), 2)]
    pattern: list[str] = []
    shape: list[str] = []
    groups = []
    prefix = None
    path_variables = sum(variable.group("converter") == "path" for variable in found)
    ambiguous = path_variables > 1
    index = 0
    while index < len(found):
        run = index + 1  # the variables side by side from index to run
        while run < len(found) and "/" not in statics[run]:
            if "path" in (found[run - 1].group("converter"), found[run].group("converter")):
                ambiguous = True
                break
            run += 1
        if run - index == 1:
            body = rough = ".+?" if found[index].group("converter") == "path" else "[^/]+"
        else:
            body, rough = _run_patterns(index, statics[index + 1 : run])
        shape += [_static(statics[index]), rough]
        group = f"v{index}"
        pattern += [_static(statics[index]), f"(?P<{group}>{body})"]
        if any(
            variable.group("converter") not in ("int", "float")
            and is_secret(variable.group("name"))
            for variable in found[index:run]
        ):
            groups.append(group)
            if prefix is None:
                prefix = wsgi_text(rule[: found[index].start()])
        index = run
    if prefix is None:
        return None
    tail = _static(statics[-1])
    rule_slashes = sum(static.count("/") for static in statics)
    lead = _NOT_ASCII.split(statics[0], 1)[0]  # (what every form of the URL begins with)
    return SecretVariables(
        "".join([*pattern, tail]),
        "".join([*shape, tail]),
        groups,
        prefix,
        lead,
        ambiguous,
        None if path_variables else rule_slashes,
    )


def _run_patterns(index: int, between: list[str]) -> tuple[str, str]:
    """A run of variables side by side (none a ``path``), with the static text ``between``
    them, as a regex matched in linear time, and roughly, without groups (for
    :attr:`SecretVariables.shape`: each static text somewhere in the segment).

    Each variable takes the fewest characters it can, in a lookahead (the engine never goes
    back into one) read again by a backreference. The shortest variables leave the last one
    all the room there is: a segment of the run's shape is matched whatever the router's
    split."""
    statics = [_static(static) for static in between]
    exact = "".join(
        f"(?=(?P<r{index}_{number}>[^/]+?{static}))(?P=r{index}_{number})"
        for number, static in enumerate(statics)
    )
    rough = "".join(f"(?=[^/]+?{static})" for static in statics)
    return f"{exact}[^/]+", f"{rough}[^/]+"


def _static(text: str) -> str:
    """The regex of a rule's static ``text``. A character beyond ASCII is matched in each form
    a URL writes it: as WSGI carries it (UTF-8 as latin-1 characters: ``PATH_INFO``, a
    ``Referer``), percent-encoded in either case (as ``url_for`` writes a link and a browser
    sends it), or as it is (a page's text)."""
    if text.isascii():
        return re.escape(text)
    return "".join(re.escape(char) if char.isascii() else _forms(char) for char in text)


def _forms(char: str) -> str:
    """:func:`_static` of one character beyond ASCII."""
    encoded = char.encode("utf-8")
    percent = "".join(
        f"%[{byte >> 4:X}{byte >> 4:x}][{byte & 15:X}{byte & 15:x}]" for byte in encoded
    )
    return f"(?:{re.escape(encoded.decode('latin-1'))}|{percent}|{re.escape(char)})"


class SecretRules:
    """The rules with secret variables an app has, matched together: a URL is first tried
    against all of them in one regex (without groups, so that the compiler merges what their
    beginnings share), and only a URL of their shape is read rule by rule, by the rules whose
    paths have as many slashes as it has: every rule it has the shape of filters its secret
    variables (two rules may overlap)."""

    __slots__ = (
        "_any",
        "_by_slashes",
        "_leads",
        "_open_rules",
        "_rules",
        "_slow_rules",
        "_text_leads",
    )

    def __init__(self, rules: Sequence[SecretVariables]) -> None:
        self._rules = tuple(rules)
        leads = _alternation(_shortest([rule.lead for rule in rules]))
        self._leads = re.compile(leads).search
        self._text_leads = re.compile(leads.decode("ascii")).search
        # A rule whose variables can share text is read alone, within its shorter length.
        fast = [rule.shape for rule in self._rules if rule.max_length == MAX_PATH_LENGTH]
        self._any = re.compile(f"\\A(?:{'|'.join(fast)})\\Z", re.DOTALL) if fast else None
        self._slow_rules = tuple(rule for rule in self._rules if rule.max_length < MAX_PATH_LENGTH)
        # A path of their shape is read by the rules whose paths have as many slashes as it has,
        # and by those with a ``path`` variable.
        self._open_rules = tuple(rule for rule in self._rules if rule.slashes is None)
        by_slashes: dict[int, list[SecretVariables]] = {}
        for rule in self._rules:
            if rule.slashes is not None:
                by_slashes.setdefault(rule.slashes, []).append(rule)
        self._by_slashes = {
            count: (*rules_of_count, *self._open_rules)
            for count, rules_of_count in by_slashes.items()
        }

    def named_in(self, text: bytes) -> bool:
        """Whether ``text`` (a page) holds what the paths of one of the rules begin with (the
        text before its first variable): a link to one of their pages may be in it."""
        return self._leads(text) is not None

    def named_in_text(self, text: str) -> bool:
        """:meth:`named_in` of a text (a URL: a query parameter's value)."""
        return self._text_leads(text) is not None

    def filter_if_matching(self, path: str, replacement: str) -> str | None:
        """``path`` with the secret variables of every rule it has the shape of replaced, or
        None when it has the shape of none (or is longer than the rules read)."""
        if len(path) > MAX_PATH_LENGTH:
            return None
        # A path of none of the fast rules' shapes can only have a slow rule's.
        fits = self._any is not None and self._any.match(path) is not None
        if fits:
            candidates = self._by_slashes.get(path.count("/"), self._open_rules)
        else:
            candidates = self._slow_rules
        spans = [span for rule in candidates for span in rule.secret_spans(path)]
        return _replaced(path, spans, replacement)


def _shortest(leads: list[str]) -> list[bytes]:
    """The beginnings of ``leads`` a search needs, sorted: none that another begins (where a
    lead is, so is each of its beginnings), each no longer than :data:`_LEAD_SEARCHED`."""
    kept: list[bytes] = []
    for lead in sorted({lead[:_LEAD_SEARCHED].encode("ascii") for lead in leads}):
        if not kept or not lead.startswith(kept[-1]):
            kept.append(lead)
    return kept


def _alternation(words: list[bytes]) -> bytes:
    """A regex finding any of ``words`` (sorted, none beginning another) as a trie: at each
    character a search tries one branch per character that can follow, not one per word."""
    branches = []
    for _, grouped in groupby(words, key=lambda word: word[:1]):
        group = list(grouped)
        if len(group) == 1:
            branches.append(re.escape(group[0]))
            continue
        first, last = group[0], group[-1]  # sorted: what they share, all of the group shares
        shared = next(at for at, (a, b) in enumerate(zip(first, last)) if a != b)
        rest = _alternation([word[shared:] for word in group])
        branches.append(re.escape(first[:shared]) + b"(?:" + rest + b")")
    return b"|".join(branches)


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
