"""The one-pass pre-filter of bodies: what a body may hold (the words of a deny-listed term, a
credential's beginning, a URL, an escape, card-shaped digits), found without parsing it, so that
most bodies are kept as they are after one pass.

The body's words (lowercased, all but ASCII letters and digits deleted) are searched for the
terms by pyahocorasick's automaton (Python's ``re`` where pyahocorasick is not installed), the
rest by C-level substring searches. Bodies of ``_RE2_MIN_LENGTH`` bytes and more go instead to
one ``RE2::Set`` pass over the raw bytes where google-re2 is installed. Every engine finds the
same.

The bodies of a batch of records are pre-filtered together where google-re2 is installed: one
RE2 pass over many bodies joined (:func:`body_scanners`' ``many``) costs a fraction of a pass
over each, and lets go of the GIL once rather than once per body.

For :class:`~flask_tracking.redact.Redactor`: :func:`body_scanners` builds the pre-filter for
its deny-listed terms, and :func:`hints_of` turns what it found in a body into the hints
:data:`NAME_HINT` and :data:`VALUE_HINT`.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

from .credentials import (
    CARD_RUN_PATTERN,
    CREDENTIAL_WORDS,
    CREDENTIAL_WORDS_SEARCH,
    DIGITS_ONLY_MASK,
    MASKED_CARD_DIGITS,
    may_hold_card,
)

#: A hint of :meth:`Redactor._hints` (:func:`hints_of`): a field name in the body can be a secret
#: one (the words of a deny-listed term, or an escape that can hide them).
NAME_HINT = 1
#: A hint of :meth:`Redactor._hints` (:func:`hints_of`): a value in the body can look like a
#: credential (a word credentials begin with, a URL, a card number).
VALUE_HINT = 2

_ALPHANUMERIC = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_NOT_ALPHANUMERIC = bytes(byte for byte in range(256) if byte not in _ALPHANUMERIC)
_LOWERCASE = bytes.maketrans(_ALPHANUMERIC[10:36], _ALPHANUMERIC[36:])
_LOWER_LETTERS = frozenset(_ALPHANUMERIC[36:])
#: Between the letters of a word in :func:`_spaced`: what the translation to words deletes.
_GAP = rb"[^0-9A-Za-z]*"


def _trie(words: Iterable[bytes]) -> bytes:
    """A regex matching any of ``words``, as a trie (``p(?:ass|in)``): Python's regex engine
    tries the branches of a flat alternation one by one at every position, a trie's by their
    first byte."""
    tree: dict[int, Any] = {}
    for word in words:
        node = tree
        for byte in word:
            node = node.setdefault(byte, {})
        node[-1] = {}  # a word ends here

    def pattern(node: dict[int, Any]) -> bytes:
        branches = [
            re.escape(bytes([byte])) + pattern(node[byte]) for byte in sorted(node) if byte >= 0
        ]
        if not branches:
            return b""
        group = b"(?:" + b"|".join(branches) + b")"
        return group + b"?" if -1 in node else group

    return pattern(tree)


try:  # google-re2, where a wheel exists for the platform
    _re2: Any = importlib.import_module("re2")
except ImportError:
    _re2 = None

try:  # pyahocorasick, a dependency on CPython
    _ahocorasick: Any = importlib.import_module("ahocorasick")
except ImportError:
    _ahocorasick = None

#: What the pre-filter of a body found (:meth:`Redactor._hints` makes hints of them): the words
#: of a deny-listed term, a word credentials begin with, ``://``, a backslash or a percent sign,
#: a run of digits shaped like a card number's (needed for one, not enough).
_FOUND_TERM = 1
_FOUND_CREDENTIAL = 2
_FOUND_URL = 4
_FOUND_ESCAPE = 8
_FOUND_CARD = 16


#: Bodies shorter than this (bytes) are pre-filtered over their words even where google-re2 is
#: installed. Its binding lets go of the GIL for every match: when another thread wants the GIL
#: (a request being served), getting it back costs thread switches, 20-40 µs of CPU per match
#: in a busy gunicorn worker. The words' pass costs about 3.8 ns per byte of JSON with
#: pyahocorasick, RE2 1.5: the switches cost what that difference adds up to over 9 to 17 KB.
#: 8 KB leans towards RE2, the cheaper one wherever the GIL is not contended.
_RE2_MIN_LENGTH = 8192


#: Bodies pre-filtered together by ``many`` are joined in groups of about this many bytes: one
#: RE2 pass each, and one hand-off of the GIL. A group where a term, a credential's beginning or
#: card-shaped digits turn up has each of its bodies pre-filtered again on its own.
_GROUP_BYTES = 262144
#: Between the bodies of a group: a letter, so no term, digit run or ``://`` spans two bodies.
_SEPARATOR = b"\nQ\n"


class Scanners(NamedTuple):
    """The pre-filter of bodies (:func:`body_scanners`)."""

    #: Which ``_FOUND_*`` things a body holds (0 for most bodies).
    one: Callable[[bytes], int]
    #: The same for each body of a list, at less cost than ``one`` for each.
    many: Callable[[list[bytes]], list[int]]


def body_scanners(terms: list[bytes]) -> Scanners:
    """The pre-filter of bodies. ``terms`` are the deny-listed terms to look for, as
    :meth:`Redactor._hints` sees them (lowercase letters and digits).

    ``one``: a body shorter than ``_RE2_MIN_LENGTH``, or any body without google-re2, gets the
    words' pass of :func:`_words_scanner`; a longer one with google-re2 installed one pass of
    its linear-time C++ engine over the raw bytes (an ``RE2::Set``, which tells the patterns that
    matched and computes no positions). The engines find the same, but for card-shaped digits,
    which each finds by a different necessary condition (the card check that follows decides).

    ``many`` (with google-re2): bodies joined in groups (:data:`_GROUP_BYTES`), one RE2 pass per
    group. Each body is part of its group, so what the pass does not find is in none of them;
    a URL or an escape found is then looked for in each body by a C-level substring search,
    anything else has each body of the group pre-filtered by ``one``.
    """
    words_scan = _words_scanner(terms)
    if _re2 is not None:
        try:
            re2_scan = _re2_scanner(terms)
        except Exception:  # RE2 refuses a set too large for its memory budget (many terms)
            return Scanners(words_scan, _each(words_scan))
        # An automaton RE2 could not build would find nothing in any body: check it does.
        probe = b" ".join([*terms[:1], b"eyJ", b"://", b"%", b"4111 1111 1111 1111"])
        everything = _FOUND_CREDENTIAL | _FOUND_URL | _FOUND_ESCAPE | _FOUND_CARD
        if re2_scan(probe) == (everything | _FOUND_TERM if terms else everything):
            shortest = _RE2_MIN_LENGTH

            def scan(body: bytes) -> int:
                return re2_scan(body) if len(body) >= shortest else words_scan(body)

            return Scanners(scan, _grouped(scan, re2_scan))
    return Scanners(words_scan, _each(words_scan))


def _each(scan: Callable[[bytes], int]) -> Callable[[list[bytes]], list[int]]:
    def many(bodies: list[bytes]) -> list[int]:
        return [scan(body) for body in bodies]

    return many


def _grouped(
    scan: Callable[[bytes], int], re2_scan: Callable[[bytes], int]
) -> Callable[[list[bytes]], list[int]]:
    """``many`` of :func:`body_scanners` with google-re2."""
    punctuation = _FOUND_URL | _FOUND_ESCAPE

    def scan_group(group: list[bytes]) -> list[int]:
        if len(group) == 1:
            return [scan(group[0])]
        found = re2_scan(_SEPARATOR.join(group))
        if not found:  # most groups
            return [0] * len(group)
        if found & ~punctuation:
            return [scan(body) for body in group]
        return [_punctuation(body) & found for body in group]

    def many(bodies: list[bytes]) -> list[int]:
        results: list[int] = []
        group: list[bytes] = []
        size = 0
        for body in bodies:
            group.append(body)
            size += len(body)
            if size >= _GROUP_BYTES:
                results += scan_group(group)
                group, size = [], 0
        if group:
            results += scan_group(group)
        return results

    return many


#: How ``://`` begins in JSON that escapes its slashes, as ``\\/`` (PHP's ``json_encode``)
#: or ``\\u002f``, all of them or some.
_ESCAPED_URL = (b":\\/", b":/\\", b":\\u002f", b":\\u002F")
#: Every beginning of a URL the pre-filter looks for (as a pattern for google-re2).
_URL_PATTERN = b"|".join(map(re.escape, (b"://", *_ESCAPED_URL)))


def _punctuation(body: bytes) -> int:
    """``_FOUND_ESCAPE`` and ``_FOUND_URL`` of ``body``, by C-level searches."""
    # Bytes as integers: "in" then looks for a byte, with no detour through a bytes search.
    escape = 92 in body  # a backslash
    result = _FOUND_ESCAPE if escape or 37 in body else 0  # or "%"
    # A slash is found much faster than three bytes. JSON may escape slashes (":\/\/").
    if (47 in body and b"://" in body) or (escape and any(u in body for u in _ESCAPED_URL)):
        result |= _FOUND_URL
    return result


def _spaced(word: bytes) -> bytes:
    """A pattern finding ``word`` (lowercase letters and digits) in a body where
    :meth:`Redactor._hints` finds it in the translated words: ASCII letters in either case, any
    bytes but ASCII letters and digits between them (``Pass-Word``, ``pass\\nword``)."""
    return _GAP.join(
        b"[" + bytes([byte]) + bytes([byte]).upper() + b"]"
        if byte in _LOWER_LETTERS
        else bytes([byte])
        for byte in word
    )


def _re2_scanner(terms: list[bytes]) -> Callable[[bytes], int]:
    """One pass of an ``RE2::Set`` over the raw bytes. A process forked since the set was
    compiled compiles it again before its first pass: RE2 locks a set while it adds states to
    its automaton, and a thread of the parent that held that lock when another thread forked
    would leave it held for good in the child (whose writer would then wait forever)."""
    compiled: list[Any] = [_FORKS[0], *_re2_set(terms)]  # forks seen, Match, flags by index

    def scan(body: bytes) -> int:
        if compiled[0] != _FORKS[0]:
            compiled[:] = [_FORKS[0], *_re2_set(terms)]
        indices = compiled[1](body)
        if indices is None:  # most bodies
            return 0
        flags = compiled[2]
        result = 0
        for index in indices:
            result |= flags[index]
        return result

    return scan


def _re2_set(terms: list[bytes]) -> tuple[Callable[[bytes], list[int] | None], dict[int, int]]:
    """The ``Match`` of a compiled ``RE2::Set`` of what the pre-filter looks for, and the
    ``_FOUND_*`` flag of each of its patterns by index."""
    options = _re2.Options()
    options.encoding = _re2.Options.Encoding.LATIN1  # a byte is a character, valid UTF-8 or not
    found = _re2.Set.SearchSet(options)
    flags: dict[int, int] = {}
    for flag, pattern in (
        (_FOUND_TERM, b"|".join(map(_spaced, terms))),
        (_FOUND_CREDENTIAL, b"|".join(map(_spaced, CREDENTIAL_WORDS))),
        (_FOUND_URL, _URL_PATTERN),
        (_FOUND_ESCAPE, rb"[\\%]"),
        (_FOUND_CARD, CARD_RUN_PATTERN),
    ):
        if pattern:
            flags[found.Add(pattern)] = flag
    found.Compile()
    return found.Match, flags


#: Forks of this process (counted in the child): see :func:`_re2_scanner`.
_FORKS = [0]


def _count_fork() -> None:
    _FORKS[0] += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_count_fork)


def _words_scanner(terms: list[bytes]) -> Callable[[bytes], int]:
    """The pre-filter over the body's words (the body lowercased, all but ASCII letters and
    digits deleted): the terms and the words credentials begin with found in them by
    :func:`_aho_finder` or :func:`_re_finder`, the rest by C-level substring searches."""
    find_words = _aho_finder(terms) if _ahocorasick is not None else _re_finder(terms)

    def scan(body: bytes) -> int:
        result = _punctuation(body)
        words = body.translate(_LOWERCASE, _NOT_ALPHANUMERIC)
        result |= find_words(words)
        # Separators are deleted from the words: a card number leaves 13 digits in a row there.
        if MASKED_CARD_DIGITS in words.translate(DIGITS_ONLY_MASK):
            result |= _FOUND_CARD
        return result

    return scan


def _aho_finder(terms: list[bytes]) -> Callable[[bytes], int]:
    """``_FOUND_TERM`` and ``_FOUND_CREDENTIAL`` for the words of a body, by one pass of
    pyahocorasick's automaton of every term and credential word (C; it keeps the GIL).

    The pass stops at the first match; the kind of word it did not find is then looked for by
    the automaton of that kind alone, so a body full of matches ("key key key...") costs two
    passes, not a Python loop over every match.
    """
    flags: dict[bytes, int] = {}
    for word in terms:
        flags[word] = flags.get(word, 0) | _FOUND_TERM
    for word in CREDENTIAL_WORDS:
        flags[word] = flags.get(word, 0) | _FOUND_CREDENTIAL
    matches = _automaton(flags)
    others = {  # after a match of one kind only: the automaton of the other kind
        _FOUND_TERM: _automaton(dict.fromkeys(CREDENTIAL_WORDS, _FOUND_CREDENTIAL)),
        _FOUND_CREDENTIAL: _automaton(dict.fromkeys(terms, _FOUND_TERM)) if terms else None,
    }
    everything = _FOUND_TERM | _FOUND_CREDENTIAL

    def find(words: bytes) -> int:
        text = words.decode("latin-1")  # one character per byte, as the automata's words
        for _end, found in matches(text):
            other = None if found == everything else others[found]
            if other is not None:
                for _ in other(text):
                    return everything
            return found
        return 0

    return find


def _automaton(flags: dict[bytes, int]) -> Callable[[str], Iterator[tuple[int, int]]]:
    """The ``iter`` of a pyahocorasick automaton of the words in ``flags``, each of which it
    answers with its flags."""
    automaton = _ahocorasick.Automaton(_ahocorasick.STORE_INTS)
    for word, flag in flags.items():
        automaton.add_word(word.decode("latin-1"), flag)
    automaton.make_automaton()
    return automaton.iter  # type: ignore[no-any-return]


def _re_finder(terms: list[bytes]) -> Callable[[bytes], int]:
    """What :func:`_aho_finder` finds, with Python's ``re`` (tries of the words)."""
    word_search = re.compile(_trie([*terms, *CREDENTIAL_WORDS])).search
    term_search = re.compile(_trie(terms)).search if terms else None

    def find(words: bytes) -> int:
        if word_search(words) is None:  # most bodies
            return 0
        found = 0
        if term_search is not None and term_search(words) is not None:
            found = _FOUND_TERM
        if CREDENTIAL_WORDS_SEARCH(words) is not None:
            found |= _FOUND_CREDENTIAL
        return found

    return find


def hints_of(found: int, body: bytes, escapes: bool) -> int:
    """The hints (:meth:`Redactor._hints`) given what the pre-filter found in ``body``."""
    hints = NAME_HINT if found & _FOUND_TERM or (escapes and found & _FOUND_ESCAPE) else 0
    if (
        found & (_FOUND_CREDENTIAL | _FOUND_URL)
        or (found & _FOUND_CARD and may_hold_card(body))
        or (found & _FOUND_ESCAPE and escape_may_hide_a_value(body))
    ):
        hints |= VALUE_HINT
    return hints


def escape_may_hide_a_value(body: bytes) -> bool:
    """Whether an escape in ``body`` can hide the look of a credential: a JSON escape of a
    printable character (``\\u0041``; not those of ``"'<>&\\``, which encoders write for
    HTML's sake and no credential is recognised by), a JSON escape of a control character that
    has a short one followed by a digit (``\\u00094111...``: its hex digits join a card
    number's), a percent escape of a letter, digit or underscore (``%41``; ``%5F`` in
    ``sk%5Flive%5F...`` splits the words a token's prefix is looked for by), a URL's ``://``
    percent-encoded (``%3A%2F%2F``, ``%3A//``, ``:%2F%2F``) also with its slashes escaped by JSON
    (``%3A%5C%2F%5C%2F``, ``:%5C/``: JSON in a form's field) or with their backslashes escaped
    again (``:\\\\/\\\\/``: such JSON in a JSON string), or a percent-encoded space, plus
    or dash between digits (a card number's separators); the percent escapes also encoded
    again (``%2541``, ``%253A%252F%252F``). Each search begins with a literal (``\\u00``,
    ``%``, ``:``): C-level scans."""
    if 92 in body and (
        _JSON_HIDING_ESCAPE.search(body) is not None
        or (b":\\\\" in body and _NESTED_ESCAPED_URL.search(body) is not None)
    ):
        return True
    return 37 in body and (
        _PERCENT_HIDING_ESCAPE.search(body) is not None
        or (
            (b":%" in body or b":\\" in body or b":/%" in body or b":/\\" in body)
            and _PERCENT_SLASHES.search(body) is not None
        )
    )


_JSON_HIDING_ESCAPE = re.compile(
    rb"\\u00(?:2[013-589A-Fa-f]|3[0-9ABDFabdf]|[46][0-9A-Fa-f]|5[0-9ABD-Fabd-f]|7[0-9A-Ea-e]"
    rb"|0[89ACDacd](?=[0-9]))"
)
#: ``://`` in JSON that escapes its slashes written into a JSON string: each slash's backslash
#: escaped again (``:\\\\/\\\\/``, ``:\\\\\\/``, ``:\\\\u002f``).
_NESTED_ESCAPED_URL = re.compile(rb":(?:\\+(?:/|u002[Ff])){2}")
#: A percent escape's ``%``, itself encoded any number of times (``%`` ``%25`` ``%2525``: a value
#: encoded twice or more, which the look reads through).
_PERCENT = rb"%(?:25)*"
#: A slash as it is, or as JSON escapes it (``\\/``, ``\\u002f``).
_PLAIN_SLASH = rb"(?:\\?/|\\u002[Ff])"
#: A slash percent-encoded, or escaped by JSON with its backslash or slash percent-encoded.
_ENCODED_SLASH = (
    rb"(?:" + _PERCENT + rb"2[Ff]|" + _PERCENT + rb"5[Cc](?:/|u002[Ff]|" + _PERCENT + rb"2[Ff])"
    rb"|\\" + _PERCENT + rb"2[Ff])"
)
_SLASH = rb"(?:" + _PLAIN_SLASH + rb"|" + _ENCODED_SLASH + rb")"
_PERCENT_HIDING_ESCAPE = re.compile(
    rb"%(?:(?:25)*(?:3[0-9]|[46][1-9A-Fa-f]|[57][0-9Aa]|5[Ff]|3[Aa]" + _SLASH + _SLASH + rb")"
    rb"|(?<=[0-9]%)(?:25)*2[0BDbd](?=[0-9]))"
)
#: ``://`` after a colon as it is: one of its slashes at least percent-encoded.
_PERCENT_SLASHES = re.compile(
    rb":(?:" + _ENCODED_SLASH + _SLASH + rb"|" + _PLAIN_SLASH + _ENCODED_SLASH + rb")"
)
