"""Credentials recognised by their look, whatever their name: JSON Web Tokens, the credential of
``Bearer``/``Basic`` values, AWS access key ids, the tokens of services that mark theirs with a
prefix (GitHub, Stripe, Slack, Google API keys, npm, OpenAI), PEM private keys, card numbers and
the password of a URL's userinfo.

A leaf module: it imports only the standard library. Every ``scrub_*`` function returns its
input itself when nothing was found, else a copy with :data:`FILTERED` in place of each
credential. The pre-filter of bodies (:mod:`flask_tracking.prefilter`) looks for credentials with
what is here too: the words they begin with (:data:`CREDENTIAL_WORDS`), the shapes of card
numbers (:data:`CARD_RUN_PATTERN`, :data:`MASKED_CARD_DIGITS`) and :func:`may_hold_card`.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Callable, Iterable, Iterator
from typing import AnyStr
from urllib.parse import quote_from_bytes, unquote_to_bytes

#: The value stored in place of a secret.
FILTERED = "[Filtered]"
FILTERED_BYTES = FILTERED.encode()


def splice(text: AnyStr, replacements: Iterable[tuple[int, int, AnyStr]]) -> AnyStr:
    """``text`` with each ``(start, end, replacement)`` span replaced, the spans in order (one
    that begins inside a span replaced already is skipped); ``text`` itself when none is."""
    pieces: list[AnyStr] = []
    position = 0
    for start, end, replacement in replacements:
        if start >= position:
            pieces += [text[position:start], replacement]
            position = end
    if not pieces:
        return text
    pieces.append(text[position:])
    return text[:0].join(pieces)


def group_replaced(match: re.Match[AnyStr], group: int | str, replacement: AnyStr) -> AnyStr:
    """The text ``match`` matched, with what its ``group`` matched replaced."""
    start, end = match.span(group)
    at = match.start()
    whole = match.group()
    return whole[: start - at] + replacement + whole[end - at :]


def scrub_values(body: bytes) -> bytes:
    """``body`` with every credential recognised by its look filtered (:func:`scrub_text`)."""
    scrubbed = _scrub_plain(body)
    if 37 in scrubbed:  # "%": URL encoding may hide one
        scrubbed = _scrub_url_encoded(scrubbed)
    return scrubbed


def _scrub_plain(body: bytes) -> bytes:
    """``body`` with every credential filtered that its bytes show as they are. A form's ``+``
    is read as the space it stands for wherever a credential's look has a space (a card's
    groups, a token's scheme, a private key's header): a run of ``+`` and no ``%`` shows
    nothing once decoded that it does not show as it is."""
    return _scrub_cards(
        _sub_credentials(body, _CREDENTIAL_BYTES, _CREDENTIAL_BYTES_BEGIN, _credential_bytes)
    )


def _scrub_url_encoded(text: bytes) -> bytes:
    """``text`` with the credentials filtered that URL encoding hides: a URL in a query string
    or a form (``https%3A%2F%2Fada%3Ahunter2%40host``), a card number whose spaces are
    ``%20``, a value encoded twice. Each run of text between separators (whitespace, quotes,
    ``<>``, ``&``, ``=``, ``?``, ``#``) that holds a ``%`` is read decoded (:func:`_url_decoded`:
    up to :data:`_MAX_DECODINGS` times while that changes it); when a credential shows,
    the run is written encoded again, once, with ``[Filtered]`` in its place. A run that is
    still encoded after that many decodings is filtered whole. The backslashes a run ends in
    are kept as they are (in JSON, ``\\"`` ends a run at an escaped quote). Each byte is looked
    at a bounded number of times: the time is linear in the text.

    The whole text is read decoded first: its runs decoded are its pieces, so where the
    whole shows no credential, none of its runs does, and they are not read one by one (a
    body of many short runs costs a few C-level passes, not a Python loop over its runs)."""
    decoded = _url_decoded(text)
    if decoded is not None and _scrub_plain(decoded) == decoded:
        return text
    return _scrub_url_runs(text)


def _url_decoded(text: bytes) -> bytes | None:
    """``text`` URL-decoded as many times as that changes it, or None when it still changes
    after :data:`_MAX_DECODINGS` decodings. ``+`` is a space in the text as it came, as forms
    write it; a ``+`` that a decoding shows was encoded (``%2B``) is a plus sign (``C%2B%2B``
    is ``C++``), which the look reads as a space where a credential has one. JSON that the
    decoding shows (a form's field holding JSON) is read with its escaped slashes as slashes
    (:func:`json_slashes_unescaped`)."""
    decoded = _percent_decoded(text)
    if decoded is None or decoded is text or 92 not in decoded:  # no backslash
        return decoded
    return json_slashes_unescaped(decoded)


def _percent_decoded(text: bytes) -> bytes | None:
    """:func:`_url_decoded` but for JSON's escapes: ``text`` itself when nothing changes."""
    plainer = unquote_to_bytes(text.replace(b"+", b" "))
    for _ in range(_MAX_DECODINGS):
        if plainer == text:
            return text
        text, plainer = plainer, unquote_to_bytes(plainer)
    return text if plainer == text else None


def _scrub_url_runs(text: bytes) -> bytes:
    """:func:`_scrub_url_encoded` run by run."""
    return splice(text, _url_runs_filtered(text))


def _url_runs_filtered(text: bytes) -> Iterator[tuple[int, int, bytes]]:
    """The runs of ``text`` that :func:`_scrub_url_runs` replaces, encoded again with their
    credentials filtered, left to right."""
    mask = text.translate(_RUN_MASK)
    position = 0
    while (at := mask.find(b"%", position)) != -1:
        start = mask.rfind(b" ", 0, at) + 1
        end = mask.find(b" ", at)
        position = end = len(text) if end == -1 else end
        while text[end - 1] == 92:  # a backslash: JSON's escape of the quote that ends the run
            end -= 1  # (or an escaped backslash before it) is kept as it is, and still escapes
        run = text[start:end]
        decoded = _url_decoded(run)
        if decoded is None:  # encoded more times than anything but an attempt to hide something
            yield start, end, FILTERED_BYTES  # not kept
            continue
        scrubbed = decoded if decoded == run else _scrub_plain(decoded)
        if scrubbed != decoded:  # (nothing, or only what was filtered already: kept)
            yield (
                start,
                end,
                FILTERED_BYTES.join(
                    quote_from_bytes(piece, safe=" ").replace(" ", "+").encode("ascii")
                    for piece in scrubbed.split(FILTERED_BYTES)
                ),
            )


def json_slashes_unescaped(text: bytes) -> bytes:
    """``text`` with JSON's escaped slashes (``\\/``, ``\\u002f``) as ``/`` and its escaped
    plus signs (``\\u002B``, as .NET's System.Text.Json writes them) as ``+``: the same
    characters in a JSON string, as a URL's look needs them (``https:\\/\\/ada:pw@host``, as
    PHP's ``json_encode`` writes it). ``\\\\`` is kept as it is (the slash of ``\\\\/`` is
    not an escaped one). ``text`` itself when there is nothing to unescape."""
    return _JSON_SLASH_OR_BACKSLASH.sub(_unescape_slash, text)


#: An escaped slash (``\\/``, ``\\u002f``), plus or backslash in JSON text (``\\\\`` is
#: matched first). Not the escapes of letters and digits: unescaped, ``AKIA...\\u0041`` would
#: hide the credential that the bytes show ending at the backslash (a JSON body's second
#: reading, :func:`flask_tracking.bodies.by_look`, reads them).
_JSON_SLASH_OR_BACKSLASH = re.compile(rb"\\(?:[\\/]|u00(?:2[fFbB]))")


def _unescape_slash(match: re.Match[bytes]) -> bytes:
    """``\\/`` and ``\\u002f`` as ``/``, ``\\u002b`` as ``+``; ``\\\\`` as it is."""
    found = match.group(0)
    if found == b"\\\\":
        return found
    return b"/" if found[-1] in b"/fF" else b"+"


#: How many layers of URL encoding :func:`_scrub_url_encoded` reads through (a URL in a query
#: parameter of a URL in a query parameter is encoded twice).
_MAX_DECODINGS = 4
#: A ``bytes.translate`` table for :func:`_scrub_url_encoded`: what separates runs of URL-encoded
#: text to ``" "``, ``%`` as it is, every other byte to ``x``.
_RUN_MASK = bytes(
    ord(" ") if byte in b" \t\n\r\x0b\x0c\"'<>&=?#" else ord("%") if byte == 37 else ord("x")
    for byte in range(256)
)


def scrub_text(text: str) -> str:
    """``text`` with every credential recognised by its look filtered, whatever its name:
    JSON Web Tokens, the credential of ``Bearer``/``Basic`` values, AWS access key ids, the
    tokens of GitHub, Stripe, Slack, Google, npm and OpenAI (:data:`_PREFIXED_TOKEN`), PEM
    private keys, card numbers (13 to 19 digits, a card network's prefix, passing the Luhn
    check) and the password of a URL's userinfo (``https://user:[Filtered]@host``).
    Returns ``text`` itself when nothing was found. Text may hold JSON written as it is (a
    log line): its escaped slashes are read as slashes (:func:`json_slashes_unescaped`), and
    the text is returned with them unescaped when that shows a credential, as a body is."""
    if len(text) < 8:
        return text
    if "\\" in text and ("\\/" in text or "\\u00" in text):  # JSON's escaped slashes (rare)
        encoded = text.encode("utf-8", "surrogatepass")
        readable = json_slashes_unescaped(encoded)
        if readable != encoded:
            filtered = scrub_values(readable)
            return text if filtered is readable else filtered.decode("utf-8", "surrogatepass")
    scrubbed = text
    if _CREDENTIAL_STARTS_SEARCH(text) is not None:
        scrubbed = _sub_credentials(
            text, _CREDENTIAL_TEXT, _CREDENTIAL_TEXT_BEGIN, _credential_text
        )
    encoded = scrubbed.encode("utf-8", "surrogatepass")  # card numbers: one reading, of bytes
    cards = _scrub_cards(encoded)
    if cards is not encoded:
        scrubbed = cards.decode("utf-8", "surrogatepass")
    if "%" in scrubbed:  # URL encoding may hide one
        encoded = scrubbed.encode("utf-8", "surrogatepass")
        decoded = _scrub_url_encoded(encoded)
        if decoded is not encoded:
            scrubbed = decoded.decode("utf-8", "surrogatepass")
    return text if scrubbed == text else scrubbed


def _sub_credentials(
    text: AnyStr,
    pattern: re.Pattern[AnyStr],
    begin: re.Pattern[AnyStr],
    replace: Callable[[re.Match[AnyStr]], AnyStr | None],
) -> AnyStr:
    """``pattern.sub(replace, text)``, with the credential pattern tried only where one of its
    branches can match: where ``begin`` finds how one begins (a URL's userinfo: after ``//``).
    Every branch of the pattern starts with a lookbehind, so a plain ``sub`` runs the whole
    pattern at every position (about 130 ms per MB); every branch of ``begin`` starts with a
    literal, which Python's engine skips to. Returns ``text`` itself when nothing was found."""
    return splice(text, _credentials_found(text, pattern, begin, replace))


def _credentials_found(
    text: AnyStr,
    pattern: re.Pattern[AnyStr],
    begin: re.Pattern[AnyStr],
    replace: Callable[[re.Match[AnyStr]], AnyStr | None],
) -> Iterator[tuple[int, int, AnyStr]]:
    """The spans :func:`_sub_credentials` replaces, and with what, left to right."""
    start = done = 0
    search, match = begin.search, pattern.match
    while (candidate := search(text, start)) is not None:
        at = candidate.start()
        # Where the credential would begin, by the first character of what was found
        # (:data:`_BEGINNING_SHIFTS`); not inside the one filtered last.
        origin = at + _BEGINNING_SHIFTS.get(text[at], 0)
        found = match(text, origin) if origin >= done else None
        if found is None or (replacement := replace(found)) is None:  # None: prose, kept
            start = at + 1
            continue
        yield found.start(), found.end(), replacement
        start = done = found.end()


def _credential_bytes(match: re.Match[bytes]) -> bytes | None:
    scheme, user = match.group("scheme"), match.group("user")
    if scheme is not None:
        token = match.string[match.end("scheme") : match.end()]
        basic = scheme[1:2].lower() == b"a"
        return None if _is_prose(token.decode("ascii"), basic) else scheme + FILTERED_BYTES
    if user is not None:
        return user + b":" + FILTERED_BYTES + b"@"
    return FILTERED_BYTES


def _credential_text(match: re.Match[str]) -> str | None:
    scheme, user = match.group("scheme"), match.group("user")
    if scheme is not None:
        token = match.string[match.end("scheme") : match.end()]
        basic = scheme[1:2].lower() == "a"
        return None if _is_prose(token, basic) else scheme + FILTERED
    if user is not None:
        return f"{user}:{FILTERED}@"
    return FILTERED


def _is_prose(token: str, basic: bool) -> bool:
    """Whether the ``token`` after a ``Bearer`` or ``Basic`` is a word of prose ("Basic
    information", "Bearer tokens"), not a credential. After ``Bearer``, one of the few words
    prose puts there (:data:`_BEARER_PROSE`): a static token chosen by hand can be any other
    word. After ``Basic``, letters alone, in one case or capitalized (words joined by hyphens,
    a full stop after): the base64 of a Basic credential mixes cases and digits, and a word
    whose base64 decodes to ``user:password`` (it holds a colon) is still one."""
    if not basic:
        return token.rstrip(".").lower() in _BEARER_PROSE
    if _PROSE(token) is None:
        return False
    letters = token.rstrip(".")
    if "-" in letters or len(letters) % 4 == 1:  # no base64 a decoder would take
        return True
    return b":" not in binascii.a2b_base64(letters + "=" * (-len(letters) % 4))


#: The words prose puts after "Bearer" (in any case): "Bearer tokens", "bearer bonds".
_BEARER_PROSE = frozenset(
    {
        "token",
        "tokens",
        "authentication",
        "authorization",
        "auth",
        "scheme",
        "schemes",
        "header",
        "headers",
        "credential",
        "credentials",
        "format",
        "type",
        "value",
        "values",
        "string",
        "prefix",
        "keyword",
        "bond",
        "bonds",
        "share",
        "shares",
        "security",
        "securities",
        "instrument",
        "instruments",
        "cheque",
        "cheques",
        "check",
        "checks",
        "paper",
        "papers",
    }
)
#: A word of letters, lowercase, capitalized or capitals; words joined by hyphens; a full stop.
_PROSE = re.compile(r"(?:[A-Z]?[a-z]+|[A-Z]+)(?:-(?:[A-Z]?[a-z]+|[A-Z]+))*\.?").fullmatch


def may_hold_card(body: bytes) -> bool:
    """Whether ``body`` has a run of digits shaped like a card number: a few C-level searches
    of a digit mask, the pattern only when one of them hits."""
    return any(_card_candidates(body))


def _escapes_masked(body: bytes, masked: bytes) -> bytes:
    """``masked`` (``body`` translated by :data:`_DIGIT_MASK`) with the hex digits of each
    escape right before a digit masked as no digits: a JSON escape (``\\u00a0``, a no-break
    space, as Python's and PHP's encoders write it; ``%5Cu00a0``) or a percent escape
    (``%22``, a quote of JSON in a form's field; ``%2522``, encoded again). Whatever character
    it stands for, an escape's hex digits are no digits of a card number after it. The same
    length as ``masked``: a card's position in it is its position in ``body``. Two C-level
    substitutions, each of a fixed length."""
    percent = 37 in body
    if not percent and 92 not in body:  # no "%", no backslash: most bodies
        return masked
    body = _JSON_HEX_BEFORE_DIGIT.sub(b"xxxxx", body)
    if percent:
        body = _PERCENT_HEX_BEFORE_DIGIT.sub(b"xx", body)
    return body.translate(_DIGIT_MASK)


#: The ``u`` and hex digits of a JSON escape right before a digit, its backslash also
#: percent-encoded (see :func:`_escapes_masked`).
_JSON_HEX_BEFORE_DIGIT = re.compile(
    rb"(?:(?<=\\)|(?<=%5[Cc])|(?<=%255[Cc]))u[0-9A-Fa-f]{4}(?=[0-9])"
)
#: The hex digits of a percent escape right before a digit, also of each layer of one encoded
#: again (``%2522``: ``25`` and ``22``), up to :data:`_MAX_DECODINGS` layers.
_PERCENT_HEX_BEFORE_DIGIT = re.compile(
    rb"(?:(?<=%)|(?<=%25)|(?<=%2525)|(?<=%252525))[0-9A-Fa-f]{2}(?=[0-9])"
)


def _card_candidates(body: bytes) -> Iterator[re.Match[bytes]]:
    """The spans of ``body`` shaped like a card number, as matches in its digit mask: digit
    runs of a card's length and grouping (not part of a longer run), in order of their start.
    A few C-level searches of the mask first, the pattern only when one of them hits. Grouped
    digits are read from each of their groups on too: they may overlap (``2024 4111 1111 1111
    1111`` holds a card from its second group). At most four groups in each: the time is
    linear in the body."""
    masked = body.translate(_DIGIT_MASK)
    if not any(shape in masked for shape in _CARD_RUNS):
        return
    masked = _escapes_masked(body, masked)
    shape = _CARD_SHAPE.match
    for match in _CARD_SHAPE.finditer(masked):
        start = match.start()
        if start == 0 or masked[start - 1] != 48:  # not after a digit ("0")
            yield match
        if match.lastindex is None:  # 13 to 19 digits in a row
            continue
        end = match.end()
        group = masked.find(b" ", start, end)
        while group != -1:
            inner = shape(masked, group + 1)
            if inner is not None:
                yield inner
            group = masked.find(b" ", group + 1, end)


def _scrub_cards(body: bytes) -> bytes:
    return splice(
        body,
        (
            (match.start(), match.end(), FILTERED_BYTES)
            for match in _card_candidates(body)  # (matches in a mask of the body)
            if _is_card_number(body[match.start() : match.end()].decode("ascii"))
        ),
    )


def _is_card_number(candidate: str) -> bool:
    """A card network's prefix and a valid Luhn check digit."""
    digits = [int(char) for char in candidate if char.isdigit()]
    if not 13 <= len(digits) <= 19 or not _CARD_PREFIX.match(candidate):
        return False
    total = 0
    for index, digit in enumerate(reversed(digits)):
        if index % 2:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


# Credentials by their look. A JWT: three base64url parts, the first a JSON object ("eyJ").
# A token's characters may be escaped (``%41``, ``\u0041``), its first six too: a token read on
# to its end, so that no part of it is left to show once the escapes are read (see
# :func:`scrub_values`). A JWT is read through JSON escapes of printable characters only: one
# may begin right after the escape of a control character (:data:`_AFTER_ESCAPE`), and each
# beginning would be read again to the end of a text of them (``\u0001eyJ`` repeated).
_JWT_PART = r"(?:[A-Za-z0-9_-]|%[0-9A-Fa-f]{2}|\\u00[2-7][0-9A-Fa-f])"
_TOKEN_CHARACTER = r"(?:[A-Za-z0-9._~+/-]|%[0-9A-Fa-f]{2}|\\u00[0-9A-Fa-f]{2})"
#: Signs a token chosen by hand holds between its characters (none of a token's own).
_TOKEN_SIGN = r"[!#$()*,:;?@\[\]^{|}]"
# A token's scheme is followed by spaces, tabs or a form's ``+``; a tab may be written as
# JSON's escape ``\t`` (also in text: JSON written into a string keeps its escapes).
# A credential begins a word; right after an escape of a line break or another control
# character (``\n``, ``\u000A``: a line of a JSON string) too, though the escape ends in a
# letter or digit. A private key runs to its end line, or else to a quote, a tag or a form's
# ``&``, and not into the backslash that escapes a quote (in JSON, ``\"`` ends no string).
_AFTER_ESCAPE = r"(?<=\\[nrtbf])|(?<=\\u00[01][0-9A-Fa-f])"
# The tokens of services that mark their secrets with a prefix of their own, in the shapes
# their documentation and secret scanners (GitHub's secret scanning, gitleaks) give: GitHub's
# (``ghp_``, ``gho_``, ``ghu_``, ``ghs_``, ``ghr_``: 36 characters, more to come as GitHub
# announced; ``github_pat_``: 22 and 59 around an underscore), Stripe's secret and restricted
# keys (live or test; not the publishable ``pk_``, which pages show), Slack's (``xoxb-``...),
# Google's API keys (``AIza``, 35), npm's (``npm_``, 36) and OpenAI's (``sk-``, with the
# ``T3BlbkFJ`` every one holds, base64 of "OpenAI": ``sk-`` alone begins other services' keys
# and words). Each is read on over the characters tokens are made of, escaped too (``%41``,
# ``\u0041``): a tail past its shortest length is filtered with it, not left to show.
_TOKEN_TAIL = r"(?:[A-Za-z0-9_-]|(?:%|\\u00)(?:2[Dd]|3[0-9]|[46][1-9A-Fa-f]|5[0-9AaFf]|7[0-9Aa]))*"
_PREFIXED_TOKEN = (
    r"(?:gh[pousr]_[A-Za-z0-9_]{36}"
    r"|github_pat_[A-Za-z0-9]{22}_[A-Za-z0-9]{59}"
    r"|[rs]k_(?:live|test)_[A-Za-z0-9]{20}"
    r"|xox[abeoprs]-[A-Za-z0-9-]{10}"
    r"|AIza[A-Za-z0-9_-]{35}"
    r"|npm_[A-Za-z0-9]{36}"
    r"|sk-(?:(?:proj|svcacct|admin)-[A-Za-z0-9_-]{58}(?:[A-Za-z0-9_-]{16})?|[A-Za-z0-9]{20})"
    r"T3BlbkFJ[A-Za-z0-9_-]{20})" + _TOKEN_TAIL
)
# A URL's userinfo is tried first: right after ``://`` it is one, whatever it begins with.
# A token runs on over signs between its characters (``hunter!two``; a raw ``user:password``
# after ``Basic``): the word is one credential.
_CREDENTIAL_PATTERN = (
    r"(?<=://)(?P<user>[^\s/?#@:\"'<>]{0,256}):[^\s/?#@\"'<>]{0,256}@"
    rf"|(?P<jwt>(?:(?<![A-Za-z0-9_-])|{_AFTER_ESCAPE})"
    rf"eyJ{_JWT_PART}{{4,}}\.{_JWT_PART}{{4,}}\.{_JWT_PART}*)"
    rf"|(?P<scheme>(?:(?<![A-Za-z0-9])|{_AFTER_ESCAPE})"
    r"(?:Bearer|bearer|BEARER|Basic|basic|BASIC)(?:[ \t+]|\\t)+)"
    rf"(?=(?:{_TOKEN_CHARACTER}|{_TOKEN_SIGN}){{6}})"
    rf"{_TOKEN_CHARACTER}+=*(?:{_TOKEN_SIGN}+{_TOKEN_CHARACTER}+=*)*"
    rf"|(?P<aws>(?:(?<![A-Z0-9])|{_AFTER_ESCAPE})(?:AKIA|ASIA)[A-Z0-9]{{16}}(?![A-Z0-9]))"
    rf"|(?P<prefixed>(?:(?<![A-Za-z0-9])|{_AFTER_ESCAPE}){_PREFIXED_TOKEN})"
    r"|(?P<pem>-----BEGIN[A-Z +]{0,20}PRIVATE[ +]KEY-----"
    r"(?:(?!-----END)(?:[^\"'<&\\]|\\[^\"'<&]))*(?:-----END[A-Z +]{0,20}PRIVATE[ +]KEY-----)?)"
)
_CREDENTIAL_TEXT = re.compile(_CREDENTIAL_PATTERN)
_CREDENTIAL_BYTES = re.compile(_CREDENTIAL_PATTERN.encode("ascii"))
#: Where a branch of :data:`_CREDENTIAL_PATTERN` can match: how each begins, every branch a
#: literal (see :func:`_sub_credentials`). Python's engine skips to the first characters of
#: the branches, and tries the branches where one is (grouped by it: one try each): a
#: service's token beginning with a common letter is found by a rarer one next to it (the
#: ``k`` of ``sk_live_``, ``rk_test_`` and ``sk-``, the ``p`` of ``npm_``), and begins one
#: character before. A userinfo begins right after the ``//`` of ``://``.
_CREDENTIAL_BEGINNINGS = (
    r"eyJ|b(?:earer|asic)|B(?:earer|EARER|asic|ASIC)|A(?:KIA|SIA|Iza)|-----BEGIN|//"
    r"|g(?:h[pousr]_|ithub_pat_)|xox[abeoprs]-|k(?:_live_|_test_|-)|pm_"
)
#: Where a credential begins from the first character of its beginning found (as a character
#: and as a byte): after ``//``, one before ``k`` and ``p``, else there.
_BEGINNING_SHIFTS: dict[int | str, int] = {
    **{"/": 2, ord("/"): 2},
    **{first: -1 for letter in "kp" for first in (letter, ord(letter))},
}
_CREDENTIAL_TEXT_BEGIN = re.compile(_CREDENTIAL_BEGINNINGS)
_CREDENTIAL_BYTES_BEGIN = re.compile(_CREDENTIAL_BEGINNINGS.encode("ascii"))
#: The ``search`` of text every credential recognised by its look holds (a cheap test before
#: the pattern; one search costs less than a substring test of each).
_CREDENTIAL_STARTS_SEARCH = re.compile(
    r"eyJ|earer|EARER|asic|ASIC|A(?:KIA|SIA|Iza)|PRIVATE|://"
    r"|h[pousr]_|_pat_|k_(?:live|test)_|k-|xox|pm_"
).search
#: The same, lowercased and with only letters and digits, as :meth:`Redactor._hints` sees them
#: (the words the pre-filter of bodies looks for, :mod:`flask_tracking.prefilter`).
CREDENTIAL_WORDS = (
    *(b"eyj", b"bearer", b"basic", b"akia", b"asia", b"privatekey"),
    *(b"ghp", b"gho", b"ghu", b"ghs", b"ghr", b"githubpat", b"sklive", b"sktest", b"rklive"),
    *(b"rktest", b"xox", b"aiza", b"npm", b"t3blbkfj"),
)
#: The ``search`` of a pattern finding any of :data:`CREDENTIAL_WORDS` in a body's words.
CREDENTIAL_WORDS_SEARCH = re.compile(b"|".join(CREDENTIAL_WORDS)).search
# Card numbers: 13-19 digits in a row, or in groups of 4 (4-4-4-1..7) or 4-6-5 (Amex) split
# by single spaces, dashes or plus signs (a form's spaces); in a mask where every digit is "0"
# and every separator " ".
_DIGIT_MASK = bytes(
    ord("0") if chr(byte).isdigit() and byte < 128 else ord(" ") if byte in b" +-" else ord("x")
    for byte in range(256)
)
#: What every card-shaped run of digits in a body begins with (13 digits in a row, or grouped
#: by single spaces, dashes or plus signs): a regex over bytes, for the google-re2 pre-filter
#: of bodies.
CARD_RUN_PATTERN = (
    rb"[0-9]{13}|[0-9]{4}[ +-][0-9]{4}[ +-][0-9]{4}[ +-][0-9]|[0-9]{4}[ +-][0-9]{6}[ +-][0-9]{5}"
)
#: What every card-shaped run leaves in a body's words (separators deleted) translated by
#: :data:`DIGITS_ONLY_MASK`: 13 ``0`` in a row.
MASKED_CARD_DIGITS = b"0" * 13
#: A ``bytes.translate`` table: every ASCII digit to ``0``, every other byte to ``x``.
DIGITS_ONLY_MASK = bytes(ord("0") if byte in b"0123456789" else ord("x") for byte in range(256))
_CARD_SHAPE = re.compile(rb"0000(?:0{9,15}|( 0000 0000 0{1,7}| 000000 00000))(?!0)")
#: What every card-shaped run contains (13 digits in a row, or grouped by spaces or dashes).
_CARD_RUNS = (b"0" * 13, b"0000 0000 0000 0", b"0000 000000 0")
# Visa, Mastercard, American Express, Diners, Discover, JCB, UnionPay, Maestro.
_CARD_PREFIX = re.compile(r"4|5|6|2[2-7]|3[04-9]")
