"""Content decoding of bodies: what a Content-Type says of how a body is read
(:func:`describe_content_type`, and the kinds of body the redactor reads as text,
:data:`TEXT_KINDS` and :data:`HTML_KINDS`), the ``Content-Encoding`` undone within bounds
(:func:`decode_content`) and a declared or detected charset other than UTF-8 decoded
(:func:`as_utf8`). A body that cannot be read safely raises :class:`Unreadable`.
"""

from __future__ import annotations

import codecs
import importlib
import json
import re
import zlib
from functools import lru_cache
from typing import Any, NamedTuple

#: Body types scrubbed by their look (besides JSON, forms, multipart, XML and HTML).
TEXT_KINDS = frozenset({"", "text/plain", "application/graphql"})
#: XML types (any ``+xml`` type too): elements and attributes scrubbed by name, and URLs.
_XML_KINDS = frozenset({"text/xml", "application/xml"})
#: HTML: the parameters of URLs are scrubbed (redirect pages, links with tokens).
HTML_KINDS = frozenset({"text/html", "application/xhtml+xml"})
#: Textual types (YAML, CSV, scripts...) where escapes can hide a name.
_TEXT_PREFIXES = (
    "text/",
    "application/yaml",
    "application/x-yaml",
    "application/toml",
    "application/javascript",
)
#: Media, kept as they are: they carry no named fields (SVG, an XML type, is scrubbed).
_MEDIA_PREFIXES = ("image/", "audio/", "video/", "font/")
#: Compressed archives: what is inside cannot be read within bounds, so they are omitted.
_ARCHIVE_KINDS = frozenset(
    {
        "application/zip",
        "application/gzip",
        "application/x-gzip",
        "application/x-bzip2",
        "application/x-xz",
        "application/zstd",
        "application/x-7z-compressed",
        "application/x-rar-compressed",
        "application/vnd.rar",
    }
)


class Unreadable(Exception):
    """A body the redactor cannot read safely; ``reason`` says why (stored as the omission)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def decode_content(body: bytes, content_encoding: str, limit: int) -> bytes:
    """``body`` with its ``Content-Encoding`` undone (the last coding applied first), at most
    ``limit`` bytes of output per step: a decompression bomb costs no more than a body of
    ``limit`` bytes. Raises :class:`Unreadable` for a coding that cannot be decoded."""
    codings = [part.strip().lower() for part in content_encoding.split(",")]
    for coding in reversed([part for part in codings if part and part != "identity"]):
        if coding in ("gzip", "x-gzip"):
            body = _inflate(body, 16 + zlib.MAX_WBITS, limit, coding)
        elif coding == "deflate":  # zlib-wrapped as the RFC says, or raw as some servers send
            try:
                body = _inflate(body, zlib.MAX_WBITS, limit, coding)
            except Unreadable:
                body = _inflate(body, -zlib.MAX_WBITS, limit, coding)
        elif coding == "br":
            body = _unbrotli(body, limit)
        elif coding == "zstd":
            body = _unzstd(body, limit)
        else:
            raise Unreadable(f"content-encoding {coding[:40]} cannot be decoded")
    return body


def _inflate(body: bytes, wbits: int, limit: int, coding: str) -> bytes:
    try:
        return zlib.decompressobj(wbits).decompress(body, limit)
    except zlib.error:
        raise Unreadable(f"content-encoding {coding}: invalid data") from None


def _unbrotli(body: bytes, limit: int) -> bytes:
    decompressor = _brotli_decompressor()
    if decompressor is None:
        raise Unreadable("content-encoding br: no Brotli decoder installed")
    try:
        return bytes(decompressor.process(body, output_buffer_limit=limit))[:limit]
    except Exception:  # an old decoder without the limit, or invalid data: not readable
        raise Unreadable("content-encoding br: cannot be decoded within bounds") from None


def _brotli_decompressor() -> Any:
    for module_name in ("brotli", "brotlicffi"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        factory = getattr(module, "Decompressor", None)
        if factory is not None:
            return factory()
    return None


def _unzstd(body: bytes, limit: int) -> bytes:
    """A zstd body decoded, frame after frame (RFC 8878 allows several), to at most
    ``limit`` bytes. A frame whose window is over the 8 MB that RFC 9659 sets for the HTTP
    coding is refused (it is invalid data): the decoder allocates the window a frame
    declares, and a request chooses it. A body of more than ``_MAX_ZSTD_FRAMES`` frames is
    refused too."""
    module = _zstd_module()
    if module is None:
        raise Unreadable("content-encoding zstd: no Zstandard decoder installed")
    decoded = b""
    frames = 0
    try:
        options = {module.DecompressionParameter.window_log_max: 23}
        while body and len(decoded) < limit:
            frames += 1
            if frames > _MAX_ZSTD_FRAMES:
                raise Unreadable("content-encoding zstd: too many frames")
            decompressor = module.ZstdDecompressor(options=options)
            decoded += decompressor.decompress(body, max_length=limit - len(decoded))
            if not decompressor.eof:  # cut at the limit, or the body was cut (captured in part)
                break
            body = decompressor.unused_data
    except Unreadable:
        raise
    except Exception:
        raise Unreadable("content-encoding zstd: invalid data") from None
    return decoded


#: Frames of one zstd body decoded at most: each costs a decoder and a copy of the rest of the
#: body (thousands of empty or skippable frames made a body's decoding quadratic). Encoders
#: send one frame, or one per fragment joined.
_MAX_ZSTD_FRAMES = 100


def _zstd_module() -> Any:
    """Python's own Zstandard module (3.14 and later), or its backport (which Flask-Compress
    installs before 3.14); None without either."""
    for module_name in ("compression.zstd", "backports.zstd"):
        try:
            return importlib.import_module(module_name)
        except ImportError:
            continue
    return None


class ContentKind(NamedTuple):
    """What a Content-Type says of how a body is read (:func:`describe_content_type`)."""

    #: The media type, lowercase, without its parameters.
    kind: str
    #: Media (images, audio, video, fonts; not SVG): kept as they are.
    media: bool
    #: A compressed archive: omitted.
    archive: bool
    #: The codec of the declared charset (None: none declared).
    codec: str | None
    #: A declared charset Python does not know (the body is omitted).
    unknown_charset: str | None
    #: Without a declared charset, may be UTF-16 or UTF-32 (JSON, XML, any text).
    wide: bool
    #: Multipart, JSON, form, XML.
    shape: tuple[bool, bool, bool, bool]
    #: Scrubbed field by field (else kept only when nothing in it can be a secret).
    scrubbable: bool
    #: Escapes (a backslash, a percent sign) can hide a name in it.
    escapes: bool


#: Characters of a Content-Type beyond which its description is not remembered: a client
#: chooses its Content-Type, and servers take headers of 8 KB (gunicorn) to 256 KB (waitress).
MAX_REMEMBERED_CONTENT_TYPE_LENGTH = 256


def describe_content_type(content_type: str) -> ContentKind:
    """What ``content_type`` says of how a body is read; remembered (256 types of at most
    :data:`MAX_REMEMBERED_CONTENT_TYPE_LENGTH` characters), as types repeat."""
    if len(content_type) > MAX_REMEMBERED_CONTENT_TYPE_LENGTH:
        return _describe(content_type)
    return _remembered_description(content_type)


def _describe(content_type: str) -> ContentKind:
    kind = content_type.split(";", 1)[0].strip().lower()
    codec = unknown = None
    charset = _CHARSET.search(content_type)
    if charset is not None:
        try:
            codec = codecs.lookup(charset.group(1)).name
        except LookupError:
            unknown = charset.group(1)[:40]
    multipart = kind.startswith("multipart/")
    json_kind = "json" in kind
    form = kind == "application/x-www-form-urlencoded"
    xml = kind in _XML_KINDS or kind.endswith("+xml")
    scrubbable = multipart or json_kind or form or xml or kind in TEXT_KINDS or kind in HTML_KINDS
    return ContentKind(
        kind=kind,
        media=kind.startswith(_MEDIA_PREFIXES) and not kind.endswith("+xml"),
        archive=kind in _ARCHIVE_KINDS,
        codec=codec,
        unknown_charset=unknown,
        # Any text (a CSV that Excel exports as "Unicode text") may come as UTF-16/32.
        wide=json_kind or "xml" in kind or kind.startswith(_TEXT_PREFIXES) or kind in TEXT_KINDS,
        shape=(multipart, json_kind, form, xml),
        scrubbable=scrubbable,
        # Escapes can hide a name in text; binary formats are full of backslashes and "%".
        escapes=scrubbable or kind.startswith(_TEXT_PREFIXES),
    )


_remembered_description = lru_cache(maxsize=256)(_describe)


def as_utf8(body: bytes, described: ContentKind) -> bytes:
    """A text body in UTF-8: a declared charset other than UTF-8 or ASCII, or (without one) a
    UTF-16/32 byte-order mark or JSON's NUL pattern, is decoded. Raises :class:`Unreadable`
    for a charset Python does not know."""
    if described.unknown_charset is not None:
        raise Unreadable(f"unknown charset {described.unknown_charset}")
    codec = described.codec
    if codec is None:
        # Without a declared charset: a binary type's NUL bytes say nothing of one, and most
        # text begins with neither a NUL byte nor the first byte of a byte-order mark.
        start = body[:4]
        if not described.wide or not (
            (0 in start or start[:1] in (b"\xfe", b"\xff")) and _looks_wide(start)
        ):
            return body
        codec = json.detect_encoding(start)
    if codec in _UTF8_COMPATIBLE:
        return body
    return body.decode(codec, "replace").encode("utf-8")


def _looks_wide(start: bytes) -> bool:
    """Whether a text body begins as UTF-16 or UTF-32 does: a byte-order mark, or ASCII
    characters padded with NUL bytes."""
    if start[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        return True
    if b"\x00" not in start:
        return False
    others = start.replace(b"\x00", b"")
    return others != b"" and others.decode("latin-1").isprintable()


_CHARSET = re.compile(r"charset\s*=\s*[\"']?([A-Za-z0-9._:-]{1,40})", re.IGNORECASE)
_UTF8_COMPATIBLE = frozenset({"utf-8", "ascii"})
