"""Unit tests of :mod:`flask_tracking.credentials`: credentials recognised by their look."""

from __future__ import annotations

import random
import re
import string
import time
from collections.abc import Callable
from typing import AnyStr

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from flask_tracking import credentials
from flask_tracking.credentials import FILTERED

# --- credentials by their look -----------------------------------------------------------------

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAx\n-----END RSA PRIVATE KEY-----"


def _made_up(
    prefix: str, *lengths: int, alphabet: str = string.ascii_letters + string.digits
) -> str:
    """A made-up token (the same every run): ``prefix``, then runs of ``alphabet`` of the
    ``lengths`` joined by underscores."""
    chooser = random.Random(prefix + repr(lengths))
    return prefix + "_".join(
        "".join(chooser.choice(alphabet) for _ in range(length)) for length in lengths
    )


#: Tokens of services that mark their secrets with a prefix, in their documented shapes.
PREFIXED_TOKENS = {
    "GitHub personal access token": _made_up("ghp_", 36),
    "GitHub OAuth token": _made_up("gho_", 36),
    "GitHub user-to-server token": _made_up("ghu_", 36),
    "GitHub server-to-server token": _made_up("ghs_", 36),
    "GitHub refresh token": _made_up("ghr_", 76),
    "GitHub fine-grained token": _made_up("github_pat_", 22, 59),
    "Stripe secret key": _made_up("sk_live_", 99),
    # Stripe's documentation's (written in two, as every token here, for secret scanners' sake)
    "Stripe test key": "sk_test_" + "4eC39HqLyjWDarjtT1zdp7dc",
    "Stripe restricted key": _made_up("rk_live_", 24),
    "Stripe restricted test key": _made_up("rk_test_", 24),
    "Slack bot token": "xoxb-2048173948211-4096137823412-" + _made_up("", 24),
    "Slack user token": "xoxp-2048173948211-2048173948212-4096137823412-" + _made_up("", 32),
    "Google API key": _made_up("AIza", 35, alphabet=string.ascii_letters + string.digits + "_-"),
    "npm token": _made_up("npm_", 36),
    "OpenAI key": _made_up("sk-", 20) + "T3BlbkFJ" + _made_up("", 20),
    "OpenAI project key": _made_up("sk-proj-", 74, alphabet=string.ascii_letters + "_-")
    + "T3BlbkFJ"
    + _made_up("", 74, alphabet=string.ascii_letters + "_-"),
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"token {JWT} end", f"token {FILTERED} end"),
        ("Bearer abcdef123456", f"Bearer {FILTERED}"),
        ("auth: basic dXNlcjpwYXNz==", f"auth: basic {FILTERED}"),
        ("id AKIAIOSFODNN7EXAMPLE here", f"id {FILTERED} here"),
        (f"key:\n{PEM}\nafter", f"key:\n{FILTERED}\nafter"),
        ("card 4111 1111 1111 1111 ok", f"card {FILTERED} ok"),
        ("card 4111-1111-1111-1111", f"card {FILTERED}"),
        ("amex 378282246310005.", f"amex {FILTERED}."),
        ("https://ada:hunter2@db.example/x", f"https://ada:{FILTERED}@db.example/x"),
        ("<https://u:p@x.example/a>; rel=next", f"<https://u:{FILTERED}@x.example/a>; rel=next"),
        ("5; url=ftp://bob:pw@files.example/", f"5; url=ftp://bob:{FILTERED}@files.example/"),
    ],
)
def test_credentials_are_found_by_their_look(text: str, expected: str) -> None:
    from flask_tracking.redact import scrub_text

    assert scrub_text(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "order 4111 1111 1111 1112",  # Luhn fails
        "ts 1733456789012 ms",  # a timestamp: no card prefix
        "phone +1 555 123 4567",
        "https://user@host.example/ no password",
        "basic plan, bearer of news",
        "eyJ alone",
        "Asia/Tokyo",
        # URL-encoded, read decoded too
        "q=hello+world%21&page=2",
        "email=ada%40example.com",
        "next=https%3A%2F%2Fexample.com%2Fa%3Fb%3D1",
        "order=4111+1111+1111+1112",
        "t=1733456789012%2B1",
        "Accept: application/xhtml+xml",
        "50%+off, 100%",
    ],
)
def test_look_alikes_are_kept(text: str) -> None:
    from flask_tracking.redact import scrub_text

    assert scrub_text(text) is text
    assert credentials.scrub_values(text.encode()) == text.encode()


@pytest.mark.parametrize("secret", PREFIXED_TOKENS.values(), ids=PREFIXED_TOKENS)
@pytest.mark.parametrize(
    "template",
    [
        "{} end",
        "key: {}",
        '{{"k": "{}"}}',
        "k={}&x=1",
        "export TOKEN={}\n",
        "https://x.example/?t={}#a",
        "<input value='{}'>",
        '"\\n{}"',  # a line of a JSON string
    ],
)
def test_tokens_with_a_service_s_prefix_are_found_by_their_look(secret: str, template: str) -> None:
    from flask_tracking.redact import scrub_text

    text = template.format(secret)
    expected = template.format(FILTERED)
    assert scrub_text(text) == expected
    assert credentials.scrub_values(text.encode()) == expected.encode()


@pytest.mark.parametrize("secret", PREFIXED_TOKENS.values(), ids=PREFIXED_TOKENS)
def test_a_prefixed_token_behind_escapes_is_filtered_to_its_end(secret: str) -> None:
    """A token's characters may be percent-encoded (the text is read decoded too), and it is
    read on through escapes of its characters past its shortest length: no tail of it is left
    to show."""
    from flask_tracking.redact import scrub_text

    cut = len(secret) - 2
    for text, end in (
        (f"t={secret[:cut]}%{ord(secret[cut]):02X}{secret[cut + 1 :]}&x=1", "&x=1"),
        (f"t=%{ord(secret[0]):02x}{secret[1:]} x", " x"),
        (f"t={secret}%41tail&x=1", "&x=1"),
        (f'"{secret}\\u0041tail"', '"'),
    ):
        for scrubbed in (scrub_text(text), credentials.scrub_values(text.encode()).decode()):
            assert secret[-8:] not in scrubbed and "tail" not in scrubbed, text
            assert scrubbed.startswith(text[0]) and scrubbed.endswith(FILTERED + end), text


@pytest.mark.parametrize(
    "text",
    [
        "pk_live_" + "4eC39HqLyjWDarjtT1zdp7dc",  # a publishable key: pages show it
        "pk_test_4eC39HqLyjWDarjtT1zdp7dc",
        "sk_test_helpers",
        "sk_live_mode_enabled_for_everyone_here",
        "risk_live_4eC39HqLyjWDarjtT1zdp7dcab",  # no word of its own
        "desk_test_4eC39HqLyjWDarjtT1zdp7dcab",
        "ghp_" + "a" * 35,  # one character short
        "ghp_ and gho_ tokens",
        "github_pat_expiry_reminder_notification_settings_enabled_for_all",
        "npm_config_registry=https://registry.npmjs.org/",
        "npm_package_version npm install left-pad",
        "xoxo, see you xoxb- soon",
        "AIza" + "b" * 34,
        "sk-" + "a" * 48,  # a key of some service: which, and whether a key, is not known
        "sk-proj-abcdef and desk-top and task-runner",
        "T3BlbkFJ alone",
        "5ghp_" + "a" * 36,
    ],
)
def test_prefixed_token_look_alikes_are_kept(text: str) -> None:
    from flask_tracking.redact import scrub_text

    assert scrub_text(text) is text
    assert credentials.scrub_values(text.encode()) == text.encode()


@pytest.mark.parametrize(
    "text",
    [
        "Basic information about the plan",
        "Choose Basic Membership today",
        "plan=Basic+Membership&x=1",
        "<h2>BASIC FEATURES</h2>",
        "Bearer tokens are short-lived.",
        "Bearer Authentication: see below",
        "bearer securities",
        "Basic self-service.",
        "Basic information: see below",
        '{"title": "Basic settings"}',
    ],
)
def test_a_word_after_basic_or_bearer_is_prose_and_kept(text: str) -> None:
    # Letters alone, in one case or capitalized, are no token: tokens and the base64 of a
    # Basic credential mix cases and digits.
    from flask_tracking.redact import scrub_text

    assert scrub_text(text) is text
    assert credentials.scrub_values(text.encode()) == text.encode()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Basic dXNlcjpwYXNz", f"Basic {FILTERED}"),
        ("Bearer abcdefgh1", f"Bearer {FILTERED}"),
        ("Bearer abcDefgh", f"Bearer {FILTERED}"),
        ("Bearer abcdefgh==", f"Bearer {FILTERED}"),
        ("Bearer abc_defgh", f"Bearer {FILTERED}"),
        ("Bearer %61%62%63%64%65%66%67%68", f"Bearer {FILTERED}"),
        # Letters alone, but their base64 decodes to "user:password" (a colon): a credential.
        ("Basic zgjjwjrl", f"Basic {FILTERED}"),
        ("a=Basic+zgjjwjrl", f"a=Basic+{FILTERED}"),
        # After Bearer, only a word of prose's few known words is kept: a static token chosen
        # by hand is a word too.
        ("Bearer changeme", f"Bearer {FILTERED}"),
        ("X-Upstream: Bearer MYSECRETTOKEN", f"X-Upstream: Bearer {FILTERED}"),
        ("Bearer my-secret-token", f"Bearer {FILTERED}"),
        # A sign inside the word: one credential (raw user:password after Basic too).
        ("Bearer hunter!two x", f"Bearer {FILTERED} x"),
        ("Basic ada:hunter2", f"Basic {FILTERED}"),
        ("Basic information:hunter2", f"Basic {FILTERED}"),
        ('{"h": "Bearer abcdef!ghi\\"}', f'{{"h": "Bearer {FILTERED}\\"}}'),
        # A URL's userinfo that begins like a scheme's name is still a URL's userinfo.
        ("https://basic+deploy:hunter2@host/", f"https://basic+deploy:{FILTERED}@host/"),
    ],
)
def test_a_token_that_is_no_plain_word_is_filtered(text: str, expected: str) -> None:
    from flask_tracking.redact import scrub_text

    assert scrub_text(text) == expected
    assert credentials.scrub_values(text.encode()) == expected.encode()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "u=https%3A%2F%2Fada%3Ahunter2%40db.example%2Fx&p=2",
            f"u=https%3A%2F%2Fada%3A{FILTERED}%40db.example%2Fx&p=2",
        ),
        ("n=https%3A//ada%3Ahunter2%40db/", f"n=https%3A%2F%2Fada%3A{FILTERED}%40db%2F"),
        ("r=https%253A%252F%252Fada%253Ahunter2%2540db", f"r=https%3A%2F%2Fada%3A{FILTERED}%40db"),
        ("card=4111+1111+1111+1111", f"card={FILTERED}"),
        ("card=4111%201111%201111%201111&x=1", f"card={FILTERED}&x=1"),
        ("card=4111%2D1111%2D1111%2D1111", f"card={FILTERED}"),
        ("a=Bearer+abcdef123456", f"a=Bearer+{FILTERED}"),
        ("k=-----BEGIN+PRIVATE+KEY-----%0AMIIEvQ%2B&x=1", f"k={FILTERED}&x=1"),
        (
            "k=-----BEGIN+RSA+PRIVATE+KEY-----+MIIE+-----END+RSA+PRIVATE+KEY-----&x",
            f"k={FILTERED}&x",
        ),
        ("k=%41KIAIOSFODNN7EXAMPLE", f"k={FILTERED}"),
        ("Bearer abcdef%41rest tail", f"Bearer {FILTERED} tail"),
        ('"Bearer abcdef\\u0041rest"', f'"Bearer {FILTERED}"'),
        ("https://ada:pw%40x@db.example/", f"https://ada:{FILTERED}@db.example/"),
        ("a=%2525252525252541x&b=1", f"a={FILTERED}&b=1"),  # encoded past reading: not kept
        ("card=4111%252B1111%252B1111%252B1111", f"card={FILTERED}"),
        ("q=C%2B%2B+Bearer%20abcdef12", f"q=C%2B%2B+Bearer+{FILTERED}"),  # C++ stays C++
        ("q=C%252B%252B+Bearer%2520abcdef12", f"q=C%2B%2B+Bearer+{FILTERED}"),
        # JSON in a parameter: its escaped slashes read as slashes once decoded
        (
            "data=%7B%22url%22%3A%22https%3A%5C%2F%5C%2Fada%3Ahunter2%40host%22%7D",
            f"data=%7B%22url%22%3A%22https%3A%2F%2Fada%3A{FILTERED}%40host%22%7D",
        ),
        (
            "data=%7B%22u%22%3A%22https%3A%5Cu002f%5Cu002Fada%3Ahunter2%40host%22%7D",
            f"data=%7B%22u%22%3A%22https%3A%2F%2Fada%3A{FILTERED}%40host%22%7D",
        ),
        ("u=https:%5C/%5C/ada:hunter2@host", f"u=https%3A%2F%2Fada%3A{FILTERED}%40host"),
    ],
)
def test_credentials_behind_url_encoding_are_found(text: str, expected: str) -> None:
    """A run of URL-encoded text is read decoded too (``+`` a space, as in forms, and up to a
    few layers of encoding); where that shows a credential it is written encoded again, once,
    with the credential filtered. A token is read on through escapes in it."""
    from flask_tracking.redact import scrub_text

    assert scrub_text(text) == expected
    assert credentials.scrub_values(text.encode()) == expected.encode()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("order 2024 4111 1111 1111 1111", f"order 2024 {FILTERED}"),
        ("x 1234-4111-1111-1111-1111 y", f"x 1234-{FILTERED} y"),
        ("q=2024+4111+1111+1111+1111", f"q=2024+{FILTERED}"),
        ("1234 5678 4111 1111 1111 1111", f"1234 5678 {FILTERED}"),
        ('"\\u0009 4111 1111 1111 1111"', f'"\\u0009 {FILTERED}"'),
    ],
)
def test_a_card_number_after_a_group_of_digits_is_found(text: str, expected: str) -> None:
    """A card number's groups may follow other digits grouped alike (a year, a quantity):
    the digits that look like a card's are read from each group on, not only from the first
    (the first four groups were read, were no card, and the card was stored as it came)."""
    from flask_tracking.redact import scrub_text

    assert scrub_text(text) == expected
    assert credentials.scrub_values(text.encode()) == expected.encode()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Bearer ab%2Bcdefghijkl tail", f"Bearer {FILTERED} tail"),
        ("Bearer %61%62%63%64%65%66%67%68", f"Bearer {FILTERED}"),
        ("basic %41BCDEFGH=", f"basic {FILTERED}"),
        ('"Bearer a\\u002Fbcdefgh"', f'"Bearer {FILTERED}"'),
    ],
)
def test_a_token_with_escapes_among_its_first_characters_is_found(text: str, expected: str) -> None:
    """The six characters a token must begin with may be escaped too: a base64 token whose
    ``+`` or ``/`` is percent-encoded early was stored as it came."""
    from flask_tracking.redact import scrub_text

    assert scrub_text(text) == expected
    assert credentials.scrub_values(text.encode()) == expected.encode()


def test_json_escaped_slashes_in_text_are_read_as_slashes() -> None:
    """Text may hold JSON written as it is (a log line in custom data, a header): its escaped
    slashes are read as slashes, as in a body, and the text is stored with them unescaped
    when that shows a credential."""
    from flask_tracking.redact import scrub_text

    text = 'sent {"u":"https:\\/\\/ada:hunter2@db.example\\/x", "v": "a\\u002Fb"}'
    assert scrub_text(text) == f'sent {{"u":"https://ada:{FILTERED}@db.example/x", "v": "a/b"}}'
    clean = 'sent {"u":"https:\\/\\/db.example\\/x"}'
    assert scrub_text(clean) is clean


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # a JSON escape whose hex ends in a digit: a no-break space (Python's and PHP's
        # json encoders escape it), a thin space, a letter, a control character
        ('"Card:\\u00a04111 1111 1111 1111"', f'"Card:\\u00a0{FILTERED}"'),
        ('"\\u20094111111111111111"', f'"\\u2009{FILTERED}"'),
        ('"caf\\u00e94111-1111-1111-1111"', f'"caf\\u00e9{FILTERED}"'),
        ('"x\\u00014111 1111 1111 1111"', f'"x\\u0001{FILTERED}"'),
        # a percent escape whose hex ends in a digit: a quote (JSON in a form's field), a
        # tab, the last byte of an "é", also encoded again
        ("d=%7B%22c%22%3A%224111+1111+1111+1111%22%7D", f"d=%7B%22c%22%3A%22{FILTERED}%22%7D"),
        ("v=%094111+1111+1111+1111", f"v=%09{FILTERED}"),
        ("v=%C3%A94111-1111-1111-1111", f"v=%C3%A9{FILTERED}"),
        ("v=%25224111+1111+1111+1111", f"v=%2522{FILTERED}"),
    ],
)
def test_a_card_number_right_after_an_escape_ending_in_a_digit_is_found(
    text: str, expected: str
) -> None:
    """The hex digits of an escape (``\\u00a0``, ``%22``) are no digits of the text: a card
    number right after one is read apart from them, whatever character the escape stands for."""
    from flask_tracking.redact import scrub_text

    assert scrub_text(text) == expected
    assert credentials.scrub_values(text.encode()) == expected.encode()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('"Bearer\\tabcdef123456"', f'"Bearer\\t{FILTERED}"'),
        ('"x\\nbasic\\t\\tdXNlcjpwYXNz"', f'"x\\nbasic\\t\\t{FILTERED}"'),
        ('"Bearer \\tabcdef123456 tail"', f'"Bearer \\t{FILTERED} tail"'),
    ],
)
def test_a_token_after_a_json_escaped_tab_is_found(text: str, expected: str) -> None:
    """JSON writes a tab between a token's scheme and the token as ``\\t``: in bytes (a JSON
    body) and in text (JSON written into a string), the escape separates them as a tab does."""
    from flask_tracking.redact import scrub_text

    assert scrub_text(text) == expected
    assert credentials.scrub_values(text.encode()) == expected.encode()


# Pieces of credentials (and of near misses) as they are looked for by their look.
_CREDENTIAL_PIECES = st.sampled_from(
    [
        "eyJ",
        "hbGci",
        "OiJ9",
        ".",
        "-",
        "_",
        "Bearer",
        "bearer ",
        "BASIC\t",
        "Basic ",
        "abcdef",
        "QWxh=",
        "zgjjwjrl",
        "AKIA",
        "ASIA",
        "IOSFODNN7EXAMPLE",
        "-----BEGIN",
        " RSA",
        " PRIVATE KEY-----",
        "-----END PRIVATE KEY-----",
        "ghp_",
        "github_pat_",
        "sk_live_",
        "rk_test_",
        "xoxb-",
        "AIza",
        "npm_",
        "sk-",
        "sk-proj-",
        "T3BlbkFJ",
        "0123456789abcdefghij",
        "%41",
        "\\u0041",
        "://",
        "//",
        ":",
        "/",
        "@",
        "ada",
        "pw",
        "https",
        " ",
        "\n",
        '"',
        "x",
        "7",
    ]
)
_CREDENTIAL_TEXTS = st.lists(_CREDENTIAL_PIECES | st.text(max_size=3), max_size=30).map("".join)


def _tried_everywhere(
    pattern: re.Pattern[AnyStr], replace: Callable[[re.Match[AnyStr]], AnyStr | None], text: AnyStr
) -> AnyStr:
    """The reference: the pattern tried at every position, left to right (like ``re.sub``),
    but a match ``replace`` declines (None: prose after ``Basic``) is no match there."""
    pieces = []
    kept_from = position = 0
    while position < len(text):
        found = pattern.match(text, position)
        if found is not None and (replacement := replace(found)) is not None:
            pieces += [text[kept_from : found.start()], replacement]
            kept_from = position = found.end()
        else:
            position += 1
    return text[:0].join([*pieces, text[kept_from:]])


@settings(max_examples=500, deadline=None)
@given(text=_CREDENTIAL_TEXTS)
@example(text="xoxb-eyJeyJeyJ%41")  # a Slack token once "%41" is decoded: not this test's
def test_credentials_are_filtered_as_by_the_pattern_everywhere(text: str) -> None:
    """The pattern is tried only where a credential can begin: the same as trying it at every
    position, for text and for bytes (as they are: what URL decoding shows is
    :func:`credentials._scrub_url_encoded`'s, tested below)."""
    expected = _tried_everywhere(credentials._CREDENTIAL_TEXT, credentials._credential_text, text)
    found = credentials._sub_credentials(
        text,
        credentials._CREDENTIAL_TEXT,
        credentials._CREDENTIAL_TEXT_BEGIN,
        credentials._credential_text,
    )
    assert found == expected
    body = text.encode("utf-8", "surrogatepass")
    expected_bytes = _tried_everywhere(
        credentials._CREDENTIAL_BYTES, credentials._credential_bytes, body
    )
    assert credentials._scrub_plain(body) == credentials._scrub_cards(expected_bytes)
    if expected == text:
        assert found is text


# Pieces of URL-encoded text: escapes (of separators too), encoded twice, separators, and the
# pieces of credentials.
_URL_PIECES = st.sampled_from(
    [
        "https%3A%2F%2F",
        "https%253A//",
        "ada%3Apw%40h",
        "4111%201111%201111%201111",
        "4111+1111%2B1111",
        "Bearer%20abcdef12",
        "%2541KIAIOSFODNN7EXAMPLE",
        "%",
        "%2",
        "%25",
        "%20",
        "%2B",
        "%3A",
        "%2F",
        "%40",
        "%41",
        "%26",
        "%3D",
        "%5C",
        "+",
        "\\",
        "\\n",
        "https",
        "ada",
        "pw",
        "4111",
        "1111",
        "Bearer",
        "abcdef",
        "AKIA",
        "IOSFODNN7EXAMPLE",
        "eyJhbGciOiJIUzI1NiJ9",
        ".",
        "-----BEGIN PRIVATE KEY-----",
        "[Filtered]",
        ":",
        "/",
        "@",
        " ",
        "&",
        "=",
        "?",
        '"',
        "x",
        "7",
    ]
)


def test_a_credential_an_escape_completes_is_filtered() -> None:
    """``%41`` is the ``A`` that makes ``xoxb-eyJeyJeyJ`` a Slack token's look: filtered, as
    the server reading the decoded value would see it (Hypothesis found it)."""
    assert credentials.scrub_values(b"xoxb-eyJeyJeyJ%41") == b"[Filtered]"
    assert credentials.scrub_values(b"xoxb-eyJeyJeyJ%20") == b"xoxb-eyJeyJeyJ%20"  # a space


@settings(max_examples=500, deadline=None)
@given(text=st.lists(_URL_PIECES | st.text(max_size=2), max_size=30).map("".join))
def test_url_encoded_text_is_read_whole_only_to_know_that_no_run_shows_a_credential(
    text: str,
) -> None:
    """Where the whole text decoded shows no credential, it is kept without being read run
    by run: the same as reading it run by run."""
    body = text.encode("utf-8", "surrogatepass")
    assert credentials._scrub_url_encoded(body) == credentials._scrub_url_runs(body)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f'"x\\u000a{JWT}"', f'"x\\u000a{FILTERED}"'),  # a line of a JSON string
        (f'"{JWT[:30]}\\u0041{JWT[30:]}"', f'"{FILTERED}"'),  # read on through an escape
    ],
)
def test_a_web_token_is_read_through_escapes_of_printable_characters_only(
    text: str, expected: str
) -> None:
    """An escaped letter is read as part of a token; an escaped line break before one begins
    a line, as the line break does."""
    from flask_tracking.redact import scrub_text

    assert scrub_text(text) == expected
    assert credentials.scrub_values(text.encode()) == expected.encode()


def test_web_token_beginnings_after_control_escapes_are_read_in_linear_time() -> None:
    """A token may begin right after an escaped control character (``\\u0001eyJ``), and was
    read on through such escapes: each beginning read to the end of the text (64 KB of
    ``\\u0001eyJ`` cost 4.7 s)."""
    from flask_tracking.redact import scrub_text

    def cost(size: int) -> float:
        text = "\\u0001eyJ" * (size // 9)
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            scrub_text(text)
            credentials.scrub_values(text.encode())
            best = min(best, time.perf_counter() - started)
        return best

    assert cost(16384) < 8 * cost(4096) + 0.002
