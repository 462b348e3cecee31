"""The envelope codec: typed round trips, strict decoding, fuzzed input."""

from __future__ import annotations

import contextlib
import json

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trioactors._errors import (
    InvalidPayload,
    MalformedFrame,
    NotSerializable,
    RemoteProtocolError,
    UnknownMessageType,
)
from trioactors._wire._address import Address
from trioactors._wire._codec import Codec, Envelope, Kind, MessageRegistry, RawMessage


@attrs.frozen
class Inc:
    n: int


@attrs.frozen
class Order:
    item: str
    quantity: int
    price: float
    tags: list[str] = attrs.Factory(list)
    note: str | None = None


@attrs.frozen
class Blob:
    data: bytes
    parts: tuple[bytes, ...] = ()


@attrs.frozen
class Unregistered:
    x: int


registry = MessageRegistry()
registry.register(Inc)
registry.register(Order, tag="shop.Order")
registry.register(Blob)

FORMATS = ["json", "msgpack"]


def envelope(payload: object, kind: Kind = Kind.TELL, tag: str = "") -> Envelope:
    return Envelope(kind, "worker@b", "client@a", 7, None, tag, payload, 0)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    "payload",
    [
        Inc(3),
        Order("tea", 2, 1.5, ["hot"], None),
        Blob(bytes(range(256)), (b"", b"\x00")),  # (JSON carries bytes as base85 text)
        None,
        42,
        "text",
        [1, "two"],
        {"k": [1.5]},
    ],
)
def test_round_trip(fmt: str, payload: object) -> None:
    codec = Codec(registry, fmt)  # type: ignore[arg-type]
    decoded = codec.decode(codec.encode(envelope(payload)))
    assert decoded.payload == payload
    assert type(decoded.payload) is type(payload)
    assert (decoded.to, decoded.sender, decoded.id, decoded.kind) == (
        "worker@b",
        "client@a",
        7,
        Kind.TELL,
    )


def test_bytes_that_are_not_base85_are_an_invalid_payload() -> None:
    codec = Codec(registry, "json")
    frame = codec.encode(envelope(Blob(b"ok")))
    bad = frame.replace(json.dumps(codec._converter.unstructure(b"ok")).encode(), b'"~~~"')
    with pytest.raises(InvalidPayload, match=r"bytes @ \$\.data"):
        codec.decode(bad)


@pytest.mark.parametrize("fmt", FORMATS)
def test_error_envelopes_carry_a_message(fmt: str) -> None:
    codec = Codec(registry, fmt)  # type: ignore[arg-type]
    env = Envelope(Kind.ERROR, "$ask@a", None, 8, 7, "ActorNotFound", "no actor named 'x'")
    assert codec.decode(codec.encode(env)) == env


def test_tags_identify_types_not_import_paths() -> None:
    frame = Codec(registry).encode(envelope(Order("tea", 1, 2.0)))
    assert b"shop.Order" in frame
    assert b"test_codec" not in frame


def test_unregistered_types_are_refused_on_encode() -> None:
    with pytest.raises(NotSerializable, match="not a registered message type"):
        Codec(registry).encode(envelope(Unregistered(1)))
    with pytest.raises(NotSerializable):
        Codec(registry).encode(envelope({"k": object()}))


def test_registry_rejects_clashes_and_non_attrs() -> None:
    r = MessageRegistry()
    r.register(Inc)
    r.register(Inc)  # again: fine
    with pytest.raises(ValueError, match="already registered"):
        r.register(Order, tag="Inc")
    with pytest.raises(ValueError, match="not an attrs class"):
        r.register(dict)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_raw_message_is_written_as_its_tag_and_data(fmt: str) -> None:
    # a tool without the class sends what a node with it reads as the typed message
    tool = Codec(MessageRegistry(), fmt)  # type: ignore[arg-type]
    node = Codec(registry, fmt)  # type: ignore[arg-type]
    sent = tool.encode(
        envelope(RawMessage("shop.Order", {"item": "tea", "quantity": 2, "price": 1.5}))
    )
    assert node.decode(sent).payload == Order("tea", 2, 1.5)  # (defaults fill the rest)
    full = {"item": "tea", "quantity": 2, "price": 1.5, "tags": [], "note": None}
    assert tool.encode(envelope(RawMessage("shop.Order", full))) == node.encode(
        envelope(Order("tea", 2, 1.5))
    )
    # and the node checks the data as strictly as ever
    bad = tool.encode(envelope(RawMessage("Inc", {"n": "5"})))
    with pytest.raises(InvalidPayload, match=r"\$\.n"):
        node.decode(bad)


@pytest.mark.parametrize("fmt", FORMATS)
def test_unknown_raw_decodes_unregistered_tags_as_raw_messages(fmt: str) -> None:
    node = Codec(registry, fmt)  # type: ignore[arg-type]
    tool = Codec(MessageRegistry(), fmt, unknown="raw")  # type: ignore[arg-type]
    decoded = tool.decode(node.encode(envelope(Order("tea", 2, 1.5, ["hot"]))))
    assert decoded.tag == "shop.Order"
    assert decoded.payload == RawMessage(
        "shop.Order", {"item": "tea", "quantity": 2, "price": 1.5, "tags": ["hot"], "note": None}
    )
    # registered tags and plain values are still typed
    tool.registry.register(Inc)
    assert tool.decode(node.encode(envelope(Inc(3)))).payload == Inc(3)
    assert tool.decode(node.encode(envelope([1, "two"]))).payload == [1, "two"]
    # a raw message goes back out unchanged
    again = tool.encode(envelope(decoded.payload))
    assert node.decode(again).payload == Order("tea", 2, 1.5, ["hot"])


def test_unknown_defaults_to_error_and_can_be_switched_per_codec() -> None:
    data = frame(1, 0, "a@b", None, 1, None, 0, "Nope", {"x": 1})
    codec = Codec(registry)
    assert codec.unknown == "error"
    with pytest.raises(UnknownMessageType, match="'Nope' is not registered"):
        codec.decode(data)
    codec.unknown = "raw"
    assert codec.decode(data).payload == RawMessage("Nope", {"x": 1})
    with pytest.raises(ValueError, match="use 'error' or 'raw'"):
        Codec(registry, unknown="ignore")  # type: ignore[arg-type]


def test_a_raw_message_with_data_that_cannot_be_encoded_is_refused() -> None:
    with pytest.raises(NotSerializable):
        Codec(registry).encode(envelope(RawMessage("Inc", {"n": object()})))


def frame(*fields: object) -> bytes:
    return json.dumps(list(fields)).encode()


@pytest.mark.parametrize(
    ("data", "error", "match"),
    [
        (b"not json", MalformedFrame, "not valid json"),
        (b"{}", MalformedFrame, "expected a list of 9"),
        (frame(2, 0, "a@b", None, 1, None, 0, "", None), MalformedFrame, "version"),
        (frame(1, 9, "a@b", None, 1, None, 0, "", None), MalformedFrame, "kind"),
        (frame(1, 0, 5, None, 1, None, 0, "", None), MalformedFrame, "addresses"),
        (frame(1, 0, "a@b", None, "1", None, 0, "", None), MalformedFrame, "ids"),
        (frame(1, 0, "a@b", None, 1, None, -1, "", None), MalformedFrame, "hop count"),
        (
            frame(1, 0, "a@b", None, 1, None, 0, "Nope", {}),
            UnknownMessageType,
            "'Nope' is not registered",
        ),
        (frame(1, 0, "a@b", None, 1, None, 0, "Inc", {"n": "5"}), InvalidPayload, r"\$\.n"),
        (frame(1, 0, "a@b", None, 1, None, 0, "Inc", {"n": True}), InvalidPayload, "expected int"),
        (frame(1, 0, "a@b", None, 1, None, 0, "Inc", {}), InvalidPayload, "required field missing"),
        (
            frame(1, 0, "a@b", None, 1, None, 0, "Inc", {"n": 1, "x": 2}),
            InvalidPayload,
            "extra fields",
        ),
        (frame(1, 0, "a@b", None, 1, None, 0, "Inc", [1]), InvalidPayload, "does not fit"),
        (frame(1, 3, "a@b", None, 1, 1, 0, "E", {"no": 1}), MalformedFrame, "error envelope"),
    ],
)
def test_bad_frames_get_typed_errors(data: bytes, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        Codec(registry).decode(data)


@pytest.mark.parametrize("fmt", FORMATS)
@given(data=st.binary(max_size=300))
def test_random_bytes_never_escape_as_other_errors(fmt: str, data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):  # and nothing else
        Codec(registry, fmt).decode(data)  # type: ignore[arg-type]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=12,
)
VALID = [1, 1, "a@b", "c@d", 5, None, 0, "shop.Order", {"item": "x", "quantity": 1, "price": 2.0}]


@given(index=st.integers(0, 8), value=json_values)
def test_near_valid_frames_get_typed_errors(index: int, value: object) -> None:
    fields = list(VALID)
    fields[index] = value
    try:
        env = Codec(registry).decode(json.dumps(fields).encode())
    except RemoteProtocolError:
        return
    # whatever decodes is fully typed
    assert isinstance(env.payload, Order) or env.tag == ""


@given(st.text(max_size=60))
def test_address_parsing_is_total(text: str) -> None:
    try:
        address = Address.parse(text)
    except ValueError:
        return
    assert Address.parse(str(address)) == address


def test_address_examples() -> None:
    assert str(Address.parse("worker@node-b")) == "worker@node-b"
    for bad in ["worker", "@node", "worker@", "wor ker@node", "w@no de", "a@b@c"]:
        with pytest.raises(ValueError, match="invalid"):
            Address.parse(bad)
