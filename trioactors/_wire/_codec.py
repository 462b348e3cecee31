"""Envelopes and their wire encoding: a registry of message types and cattrs.

An envelope travels as one frame. Its header is a flat array (cheap to encode
and to check by hand); its payload is the message, unstructured by cattrs and
tagged with the name it was registered under, never with an import path::

    [version, kind, to, sender, id, correlation, hops, tag, data]

Decoding either returns an :class:`Envelope` whose ``payload`` is an instance
of the registered attrs class, or raises a typed error:
:class:`MalformedFrame` (not an envelope), :class:`UnknownMessageType` (tag not
registered), :class:`InvalidPayload` (the data does not fit the class; the
error says which field). Plain JSON values (None, bool, int, float, str, and
lists and dicts of them) travel with the empty tag, for replies such as
``return 42``.

Two formats: ``"json"`` (default; standard library ``json``) and
``"msgpack"`` (binary, faster and smaller).

A tool that does not have a node's classes (the ``trioactors`` command line)
speaks in :class:`RawMessage` values: encoding one writes its tag and data as
given, and a codec with ``unknown="raw"`` decodes a payload whose tag is not
registered into one instead of refusing it.
"""

from __future__ import annotations

import base64
import enum
import functools
import json
from typing import TYPE_CHECKING, Literal, TypeAlias, TypeVar, final

import attrs
import cattrs
import msgpack
from cattrs.preconf.json import make_converter as make_json_converter
from cattrs.preconf.msgpack import make_converter as make_msgpack_converter

from .._errors import InvalidPayload, MalformedFrame, NotSerializable, UnknownMessageType

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

__all__ = [
    "WIRE_VERSION",
    "Codec",
    "Envelope",
    "Format",
    "Kind",
    "MessageRegistry",
    "RawMessage",
    "Unknown",
    "default_registry",
    "message",
]

WIRE_VERSION = 1
PLAIN = ""
"""The tag of plain JSON values."""

Format: TypeAlias = Literal["json", "msgpack"]
Unknown: TypeAlias = Literal["error", "raw"]
"""What decoding does with a payload whose tag is not registered."""
C = TypeVar("C", bound=type)


class Kind(enum.IntEnum):
    """What an envelope is for."""

    TELL = 0
    ASK = 1
    REPLY = 2
    ERROR = 3


@final
@attrs.frozen
class Envelope:
    """One message on its way between nodes.

    ``sender`` is the reply address: a reply or error goes there, with
    ``correlation`` set to this envelope's ``id``. For ``ERROR`` envelopes,
    ``tag`` names the error type and ``payload`` is its message.

    .. versionadded:: 0.1
    """

    kind: Kind
    to: str
    sender: str | None
    id: int
    correlation: int | None
    tag: str
    payload: object
    hops: int = 0


@final
@attrs.frozen
class RawMessage:
    """A message as its tag and unstructured data, without its class.

    For tools that talk to nodes whose classes they cannot import: encoding a
    ``RawMessage`` writes ``tag`` and ``data`` as given (no registry lookup;
    ``data`` must be plain JSON data, as the class would unstructure to), and
    a :class:`Codec` with ``unknown="raw"`` decodes payloads of unregistered
    tags into one. The receiving node checks ``data`` against its class as
    strictly as any payload.

    .. versionadded:: 0.1
    """

    tag: str
    data: object


@final
class MessageRegistry:
    """The message types a node can send and receive, each under a tag.

    Register every attrs class that crosses the wire, on every node, under the
    same tag. Tags, not import paths, identify types, so classes defined in
    ``__main__`` or a notebook work too.

    .. versionadded:: 0.1
    """

    def __init__(self) -> None:
        self._by_tag: dict[str, type] = {}
        self._by_class: dict[type, str] = {}

    def register(self, cls: C, tag: str | None = None) -> C:
        """Register ``cls`` (an attrs class) under ``tag`` (default: its name).

        Raises:
          ValueError: not an attrs class, or the tag is taken by another class.
        """
        if not _is_attrs(cls):
            raise ValueError(f"{cls!r} is not an attrs class; decorate it with @attrs.frozen")
        tag = cls.__name__ if tag is None else tag
        if not tag:
            raise ValueError("a message tag cannot be empty")
        other = self._by_tag.get(tag)
        if other is not None and other is not cls:
            raise ValueError(
                f"tag {tag!r} is already registered for {other.__module__}.{other.__qualname__}; "
                "pass a distinct tag=..."
            )
        self._by_tag[tag] = cls
        self._by_class[cls] = tag
        return cls

    def tag_of(self, cls: type) -> str | None:
        """The tag ``cls`` is registered under, or ``None``."""
        return self._by_class.get(cls)

    def class_of(self, tag: str) -> type | None:
        """The class registered under ``tag``, or ``None``."""
        return self._by_tag.get(tag)

    def __contains__(self, cls: object) -> bool:
        return cls in self._by_class

    def tags(self) -> list[str]:
        """Every registered tag, sorted."""
        return sorted(self._by_tag)


default_registry = MessageRegistry()
"""The registry nodes use unless given another one."""


def message(cls: C | None = None, /, *, tag: str | None = None) -> C | Callable[[C], C]:
    """Class decorator: register an attrs class in the default registry.

    ``@trioactors.message`` or ``@trioactors.message(tag="billing.Charge")``;
    put it above ``@attrs.frozen``.
    """

    def register(c: C) -> C:
        return default_registry.register(c, tag)

    return register if cls is None else register(cls)


def _strict(
    expected: tuple[type, ...], convert: Callable[[object], object] | None = None
) -> Callable[[object, type], object]:
    names = " or ".join(t.__name__ for t in expected)

    def hook(value: object, _: type) -> object:
        # bool is an int in Python, but never on our wire
        if type(value) not in expected:
            raise TypeError(f"expected {names}, got {type(value).__name__} {value!r:.40}")
        return value if convert is None else convert(value)

    return hook


def _b85(value: object) -> bytes:
    try:
        return base64.b85decode(value)  # type: ignore[arg-type]
    except ValueError as exc:
        raise TypeError(f"expected bytes as base85 text: {exc}") from None


def _configure(converter: cattrs.Converter, format: Format) -> None:
    """cattrs converts leniently (``"5"`` to 5); on the wire we are strict."""
    converter.register_structure_hook(int, _strict((int,)))
    converter.register_structure_hook(float, _strict((int, float), float))  # type: ignore[arg-type]
    converter.register_structure_hook(str, _strict((str,)))
    converter.register_structure_hook(bool, _strict((bool,)))
    if format == "json":  # JSON has no bytes: cattrs writes them as base85 text
        converter.register_structure_hook(bytes, _strict((str,), _b85))
    else:
        converter.register_structure_hook(bytes, _strict((bytes,)))


def _register_service_messages(
    registry: MessageRegistry, prefix: str, classes: Iterable[type]
) -> None:
    """Register each of a service's message classes as ``prefix.ClassName``,
    unless it is registered already (a service started twice, or two nodes
    sharing a registry)."""
    for cls in classes:
        if registry.tag_of(cls) is None:
            registry.register(cls, f"{prefix}.{cls.__name__}")


@functools.cache
def _converter(format: Format) -> cattrs.Converter:
    if format == "json":
        converter: cattrs.Converter = make_json_converter(forbid_extra_keys=True)
    else:
        converter = make_msgpack_converter(forbid_extra_keys=True)
    _configure(converter, format)
    return converter


@final
class Codec:
    """Encodes envelopes to frames and decodes frames to envelopes.

    Args:
      registry: the message types (default: ``default_registry``).
      format: ``"json"`` (default) or ``"msgpack"``.
      unknown: what decoding does with a payload whose tag is not registered:
        ``"error"`` (default) raises :class:`UnknownMessageType`; ``"raw"``
        returns a :class:`RawMessage` (for tools without the node's classes).
        Also settable later as the ``unknown`` attribute, e.g. on
        ``node.codec``.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        registry: MessageRegistry | None = None,
        format: Format = "json",
        *,
        unknown: Unknown = "error",
    ) -> None:
        if unknown not in ("error", "raw"):
            raise ValueError(f"unknown={unknown!r}: use 'error' or 'raw'")
        self.registry = default_registry if registry is None else registry
        self.format = format
        self.unknown: Unknown = unknown
        if format == "json":
            self._dumps: Callable[[object], bytes] = _json_dumps
            self._loads: Callable[[bytes], object] = json.loads
        elif format == "msgpack":
            self._dumps = _msgpack_dumps
            self._loads = _msgpack_loads
        else:
            raise ValueError(f"unknown wire format {format!r}: use 'json' or 'msgpack'")
        # One per format for the whole process: cattrs compiles a function per
        # class on first use, and a process running many nodes (a simulated
        # cluster) would otherwise compile them once per node.
        self._converter = _converter(format)

    # -- encoding ----------------------------------------------------------------

    def encode(self, envelope: Envelope, *, raw: bool = False) -> bytes:
        """The frame for ``envelope``.

        With ``raw=True`` the payload is already unstructured data under
        ``envelope.tag`` (a forwarded envelope, decoded with ``structure=False``).
        A :class:`RawMessage` payload is written as its tag and data.

        Raises:
          NotSerializable: the payload's type is not registered, or the payload
            is not plain JSON data.
        """
        tag, data = (envelope.tag, envelope.payload) if raw else self._unstructure(envelope)
        header = [
            WIRE_VERSION,
            int(envelope.kind),
            envelope.to,
            envelope.sender,
            envelope.id,
            envelope.correlation,
            envelope.hops,
            tag,
            data,
        ]
        try:
            return self._dumps(header)
        except (TypeError, ValueError, OverflowError) as exc:
            raise NotSerializable(
                f"cannot encode {type(envelope.payload).__qualname__} for {envelope.to}: {exc}; "
                "send registered attrs classes and plain JSON values only"
            ) from exc

    def _unstructure(self, envelope: Envelope) -> tuple[str, object]:
        payload = envelope.payload
        if envelope.kind is Kind.ERROR:
            return envelope.tag, str(payload)
        cls = type(payload)
        tag = self.registry.tag_of(cls)
        if tag is not None:
            return tag, self._converter.unstructure(payload, cls)
        if payload is None or cls in (bool, int, float, str, list, dict):
            return PLAIN, payload
        if cls is RawMessage:
            assert isinstance(payload, RawMessage)
            return payload.tag, payload.data
        raise NotSerializable(
            f"{cls.__module__}.{cls.__qualname__} is not a registered message type; "
            f"register it on every node: registry.register({cls.__qualname__}) or "
            "decorate it with @trioactors.message"
        )

    # -- decoding ----------------------------------------------------------------

    def decode(self, frame: bytes, *, structure: bool = True) -> Envelope:
        """The envelope in ``frame``, with a typed payload.

        With ``structure=False`` the payload is left as unstructured data (for
        a node that only forwards it, or decides first where it goes); finish
        with :meth:`structure`.

        Raises:
          MalformedFrame: not an envelope of this protocol version.
          UnknownMessageType: the payload's tag is not registered (unless
            ``unknown="raw"``: then the payload is a :class:`RawMessage`).
          InvalidPayload: the payload does not fit its registered class.
        """
        try:
            header = self._loads(frame)
        except Exception as exc:  # each decoder has its own exception zoo
            raise MalformedFrame(f"frame is not valid {self.format}: {exc}") from None
        if type(header) is not list or len(header) != 9:
            raise MalformedFrame(
                f"frame is not an envelope (expected a list of 9 fields, got {_kind(header)})"
            )
        version, kind, to, sender, id_, correlation, hops, tag, data = header
        if version != WIRE_VERSION:
            raise MalformedFrame(f"envelope version {version!r} is not {WIRE_VERSION}")
        if type(kind) is not int or not 0 <= kind <= 3:
            raise MalformedFrame(f"envelope kind {kind!r} is not 0-3")
        if type(to) is not str or (sender is not None and type(sender) is not str):
            raise MalformedFrame("envelope addresses must be strings")
        if type(id_) is not int or (correlation is not None and type(correlation) is not int):
            raise MalformedFrame("envelope ids must be integers")
        if type(hops) is not int or hops < 0:
            raise MalformedFrame(f"envelope hop count {hops!r} is not a non-negative integer")
        if type(tag) is not str:
            raise MalformedFrame(f"payload tag {tag!r} is not a string")
        envelope_kind = Kind(kind)
        if envelope_kind is Kind.ERROR:
            if type(data) is not str:
                raise MalformedFrame("an error envelope's payload must be a string")
            payload: object = data
        elif structure:
            payload = self._structure(tag, data)
        else:
            payload = data
        return Envelope(envelope_kind, to, sender, id_, correlation, tag, payload, hops)

    def structure(self, envelope: Envelope) -> object:
        """The typed payload of an envelope decoded with ``structure=False``.

        Raises:
          UnknownMessageType, InvalidPayload: as :meth:`decode`.
        """
        if envelope.kind is Kind.ERROR:
            return envelope.payload
        return self._structure(envelope.tag, envelope.payload)

    def _structure(self, tag: str, data: object) -> object:
        if tag == PLAIN:
            return data
        cls = self.registry.class_of(tag)
        if cls is None:
            if self.unknown == "raw":
                return RawMessage(tag, data)
            tags = self.registry.tags()  # (the application's before the services' $... tags)
            known = [t for t in tags if not t.startswith("$")] + [t for t in tags if t[:1] == "$"]
            raise UnknownMessageType(
                f"message type {tag!r} is not registered on this node "
                f"(known: {', '.join(known[:10]) or 'none'}{', ...' if len(known) > 10 else ''})"
            )
        try:
            return self._converter.structure(data, cls)
        except cattrs.BaseValidationError as exc:
            details = "; ".join(cattrs.transform_error(exc))
            raise InvalidPayload(f"payload does not fit {tag!r}: {details}") from None
        except Exception as exc:
            raise InvalidPayload(f"payload does not fit {tag!r}: {exc!r}") from None


def _is_attrs(cls: type) -> bool:
    # attrs.has is a TypeGuard, which would narrow `cls` away from its TypeVar
    return attrs.has(cls)


def _kind(value: object) -> str:
    if type(value) is list:
        return f"a list of {len(value)}"
    return type(value).__name__


def _json_dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _msgpack_dumps(value: object) -> bytes:
    data = msgpack.packb(value, use_bin_type=True)
    assert isinstance(data, bytes)
    return data


def _msgpack_loads(frame: bytes) -> object:
    value: object = msgpack.unpackb(frame, raw=False, strict_map_key=True)
    return value
