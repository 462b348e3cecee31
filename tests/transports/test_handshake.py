"""The handshake state machine, sans IO: pure, synchronous, exhaustive."""

from __future__ import annotations

import contextlib
import json
import random
from typing import TYPE_CHECKING

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trioactors._errors import (
    AuthenticationFailed,
    LocalProtocolError,
    MalformedFrame,
    ProtocolVersionMismatch,
    RemoteProtocolError,
)
from trioactors._wire._handshake import (
    MAX_MESSAGE_SIZE,
    NONCE_SIZE,
    Action,
    ClientHandshake,
    Established,
    Failed,
    HandshakeState,
    Hello,
    Message,
    PeerInfo,
    Proof,
    Rejected,
    Role,
    Send,
    ServerHandshake,
    ServerHello,
    Welcome,
    decode_message,
    encode_message,
)

if TYPE_CHECKING:
    from collections.abc import Callable

VERSION = 1


def seeded(seed: int) -> random.Random:
    return random.Random(seed)


def client(secret: bytes = b"s3cret", *, version: int = VERSION, seed: int = 1) -> ClientHandshake:
    return ClientHandshake(
        node="alice",
        address="tcp://127.0.0.1:1111",
        secret=secret,
        version=version,
        random_bytes=seeded(seed).randbytes,
    )


def server(secret: bytes = b"s3cret", *, version: int = VERSION, seed: int = 2) -> ServerHandshake:
    return ServerHandshake(
        node="bob",
        address="tcp://127.0.0.1:2222",
        secret=secret,
        version=version,
        random_bytes=seeded(seed).randbytes,
    )


def sends(actions: list[Action]) -> list[bytes]:
    return [a.message for a in actions if isinstance(a, Send)]


def failure(actions: list[Action]) -> RemoteProtocolError:
    assert isinstance(actions[-1], Failed), actions
    return actions[-1].error


def run(c: ClientHandshake, s: ServerHandshake) -> tuple[list[Action], list[Action]]:
    """Pump messages between the two machines until neither has anything to say."""
    to_server = [c.start()]
    client_actions: list[Action] = []
    server_actions: list[Action] = []
    while to_server:
        actions = s.receive(to_server.pop(0))
        server_actions += actions
        for message in sends(actions):
            if c.state in (HandshakeState.ESTABLISHED, HandshakeState.FAILED):
                break
            replies = c.receive(message)
            client_actions += replies
            to_server += sends(replies)
    return client_actions, server_actions


def test_both_sides_authenticate_and_learn_each_other() -> None:
    c, s = client(), server()
    client_actions, server_actions = run(c, s)
    assert client_actions[-1] == Established(PeerInfo("bob", "tcp://127.0.0.1:2222", VERSION))
    assert server_actions[-1] == Established(PeerInfo("alice", "tcp://127.0.0.1:1111", VERSION))
    assert c.state is s.state is HandshakeState.ESTABLISHED


def test_messages_are_small_json_and_never_contain_the_secret() -> None:
    secret = b"very-secret-value"
    c, s = client(secret), server(secret)
    hello = c.start()
    reply = s.receive(hello)
    proof = c.receive(sends(reply)[0])
    welcome = s.receive(sends(proof)[0])
    for message in [hello, *sends(reply), *sends(proof), *sends(welcome)]:
        assert secret not in message
        assert secret.hex().encode() not in message
        assert isinstance(json.loads(message), dict)
        assert len(message) < 512


def test_empty_secrets_on_both_sides_need_no_authentication() -> None:
    client_actions, server_actions = run(client(b""), server(b""))
    assert isinstance(client_actions[-1], Established)
    assert isinstance(server_actions[-1], Established)


@pytest.mark.parametrize(
    ("client_secret", "server_secret"),
    [(b"wrong", b"right"), (b"", b"right"), (b"right", b"")],
)
def test_a_wrong_or_missing_secret_fails_on_both_sides(
    client_secret: bytes, server_secret: bytes
) -> None:
    c, s = client(client_secret), server(server_secret)
    reply = s.receive(c.start())
    # The client checks the server's proof first, and refuses.
    actions = c.receive(sends(reply)[0])
    assert isinstance(failure(actions), AuthenticationFailed)
    assert decode_message(sends(actions)[0]) == Rejected("auth")
    # The server hears the refusal and fails too (it counts an auth failure).
    assert isinstance(failure(s.receive(sends(actions)[0])), AuthenticationFailed)
    assert c.state is s.state is HandshakeState.FAILED
    assert s.claimed is not None
    assert s.claimed.node == "alice"


def test_server_rejects_a_client_that_cannot_prove_the_secret() -> None:
    c, s = client(), server()
    s.receive(c.start())
    actions = s.receive(encode_message(Proof(b"\x00" * 32)))
    assert isinstance(failure(actions), AuthenticationFailed)
    assert "alice" in str(failure(actions))
    assert decode_message(sends(actions)[0]) == Rejected("auth")


def test_a_proof_cannot_be_replayed_in_another_session() -> None:
    c1, s1 = client(seed=1), server(seed=2)
    proof = c1.receive(sends(s1.receive(c1.start()))[0])
    c2, s2 = client(seed=1), server(seed=3)  # same client nonce, fresh server nonce
    s2.receive(c2.start())
    assert isinstance(failure(s2.receive(sends(proof)[0])), AuthenticationFailed)


def test_a_server_proof_cannot_be_reflected_as_a_client_proof() -> None:
    c, s = client(), server()
    reply = decode_message(sends(s.receive(c.start()))[0])
    assert isinstance(reply, ServerHello)
    actions = s.receive(encode_message(Proof(reply.proof)))
    assert isinstance(failure(actions), AuthenticationFailed)


def test_a_hello_altered_in_flight_fails_authentication() -> None:
    c, s = client(), server()
    hello = decode_message(c.start())
    assert isinstance(hello, Hello)
    forged = Hello(hello.version, hello.node, "tcp://evil.example:666", hello.nonce)
    reply = s.receive(encode_message(forged))
    assert isinstance(failure(c.receive(sends(reply)[0])), AuthenticationFailed)


def test_version_mismatch_is_rejected_with_reason_version() -> None:
    c, s = client(version=VERSION + 1), server()
    actions = s.receive(c.start())
    assert isinstance(failure(actions), ProtocolVersionMismatch)
    rejected = decode_message(sends(actions)[0])
    assert rejected == Rejected("version", VERSION)
    assert isinstance(failure(c.receive(sends(actions)[0])), ProtocolVersionMismatch)
    assert s.claimed == PeerInfo("alice", "", VERSION + 1)


def test_a_future_hello_is_told_version_not_malformed() -> None:
    s = server()
    future = json.dumps({"type": "hello", "version": 7, "node": "zed", "shiny": [1, 2]}).encode()
    actions = s.receive(future)
    assert isinstance(failure(actions), ProtocolVersionMismatch)
    assert decode_message(sends(actions)[0]) == Rejected("version", VERSION)


def test_client_detects_a_server_of_another_version() -> None:
    c = client()
    c.start()
    other = ServerHello(VERSION + 1, "bob", "tcp://b:1", b"\x01" * NONCE_SIZE, b"\x02" * 32)
    actions = c.receive(encode_message(other))
    assert isinstance(failure(actions), ProtocolVersionMismatch)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage",
        b"\xff\xfe",
        b"[]",
        b'{"type": "hello"}',
        b'{"type": "nope"}',
        b'{"type": "hello", "version": true, "node": "a", "address": "b", "nonce": ""}',
        b'{"type": "hello", "version": NaN}',
        b"[" * 4000,
        b"[" * 5000,
        b" " * (MAX_MESSAGE_SIZE + 1),
    ],
)
def test_garbage_is_malformed_and_answered(data: bytes) -> None:
    s = server()
    actions = s.receive(data)
    assert isinstance(failure(actions), MalformedFrame)
    assert decode_message(sends(actions)[0]) == Rejected("malformed")
    assert s.state is HandshakeState.FAILED


def test_unexpected_messages_in_a_state_are_malformed() -> None:
    s = server()
    assert isinstance(failure(s.receive(encode_message(Welcome()))), MalformedFrame)
    c = client()
    c.start()
    assert isinstance(failure(c.receive(encode_message(Welcome()))), MalformedFrame)


@pytest.mark.parametrize(
    ("reason", "error"),
    [
        ("version", ProtocolVersionMismatch),
        ("auth", AuthenticationFailed),
        ("malformed", MalformedFrame),
    ],
)
def test_client_reports_a_rejection_by_reason(
    reason: str, error: type[RemoteProtocolError]
) -> None:
    c = client()
    c.start()
    actions = c.receive(encode_message(Rejected(reason)))
    assert actions == [Failed(failure(actions))]
    assert isinstance(failure(actions), error)


def test_misuse_is_a_local_error() -> None:
    c = client()
    with pytest.raises(LocalProtocolError, match="start"):
        c.receive(b"{}")
    c.start()
    with pytest.raises(LocalProtocolError, match="once"):
        c.start()
    c.receive(b"garbage")
    with pytest.raises(LocalProtocolError, match="over"):
        c.receive(b"garbage")
    with pytest.raises(LocalProtocolError):
        ClientHandshake(node="", address="x", secret=b"", version=1)
    with pytest.raises(LocalProtocolError):
        ServerHandshake(node="n", address="a" * 300, secret=b"", version=1)
    with pytest.raises(LocalProtocolError, match="random_bytes"):
        ClientHandshake(node="n", address="a", secret=b"", version=1, random_bytes=lambda n: b"")


def test_nonces_are_fresh_by_default() -> None:
    def nonce(machine: ClientHandshake) -> bytes:
        hello = decode_message(machine.start())
        assert isinstance(hello, Hello)
        return hello.nonce

    kw = {"node": "n", "address": "a", "secret": b"", "version": 1}
    assert nonce(ClientHandshake(**kw)) != nonce(ClientHandshake(**kw))  # type: ignore[arg-type]


# -- properties ---------------------------------------------------------------------

names = st.text(min_size=1, max_size=40)
nonces = st.binary(min_size=NONCE_SIZE, max_size=NONCE_SIZE)
proofs = st.binary(min_size=32, max_size=32)
versions = st.integers(min_value=-(2**63), max_value=2**63)
messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Hello, versions, names, names, nonces),
    st.builds(ServerHello, versions, names, names, nonces, proofs),
    st.builds(Proof, proofs),
    st.just(Welcome()),
    st.builds(Rejected, st.sampled_from(["version", "auth", "malformed"]), st.none() | versions),
)


@given(messages)
def test_encode_decode_round_trip(message: Message) -> None:
    assert decode_message(encode_message(message)) == message


@given(st.binary(max_size=300))
def test_decoding_random_bytes_gives_a_message_or_malformed(data: bytes) -> None:
    with contextlib.suppress(MalformedFrame):
        decode_message(data)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=70)
    | st.sampled_from(["00" * 32, "ab" * 32, "zz" * 32, "0" * 63]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(), children),
    max_leaves=8,
)
keys = st.sampled_from(["type", "version", "node", "address", "nonce", "proof", "reason"])
kinds = st.sampled_from(["hello", "server-hello", "proof", "welcome", "rejected", "other"])


@st.composite
def near_valid(draw: st.DrawFn) -> bytes:
    """A valid message with fields removed, replaced or added, or its JSON cut short."""
    obj = json.loads(encode_message(draw(messages)))
    for _ in range(draw(st.integers(0, 3))):
        match draw(st.sampled_from(["drop", "set", "type"])):
            case "drop" if obj:
                del obj[draw(st.sampled_from(sorted(obj)))]
            case "set":
                obj[draw(keys)] = draw(json_values)
            case _:
                obj["type"] = draw(kinds)
    data = json.dumps(obj).encode()
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return data


@given(near_valid())
def test_decoding_near_valid_json_gives_a_message_or_malformed(data: bytes) -> None:
    with contextlib.suppress(MalformedFrame):
        decode_message(data)


@given(st.lists(near_valid() | st.binary(max_size=100), min_size=1, max_size=4), st.booleans())
def test_machines_never_raise_on_peer_input(inputs: list[bytes], as_client: bool) -> None:
    machine: ClientHandshake | ServerHandshake
    if as_client:
        machine = client()
        machine.start()
    else:
        machine = server()
    for data in inputs:
        actions = machine.receive(data)
        for action in actions:
            if isinstance(action, Failed):
                assert isinstance(action.error, RemoteProtocolError)
        if machine.state in (HandshakeState.FAILED, HandshakeState.ESTABLISHED):
            break
    assert machine.state is not HandshakeState.ESTABLISHED  # nobody guessed an HMAC


# -- roles ---------------------------------------------------------------------------


def observer(secret: bytes = b"read-only", *, seed: int = 1) -> ClientHandshake:
    return ClientHandshake(
        node="tool",
        address="tcp://127.0.0.1:3333",
        secret=secret,
        version=VERSION,
        random_bytes=seeded(seed).randbytes,
        role=Role.OBSERVER,
    )


def guarded_server(read_only: bytes | None = b"read-only") -> ServerHandshake:
    return ServerHandshake(
        node="bob",
        address="tcp://127.0.0.1:2222",
        secret=b"s3cret",
        version=VERSION,
        random_bytes=seeded(2).randbytes,
        read_only_secret=read_only,
    )


def test_an_observer_proves_the_read_only_secret_and_both_sides_know_its_role() -> None:
    client_actions, server_actions = run(observer(), guarded_server())
    assert client_actions[-1] == Established(
        PeerInfo("bob", "tcp://127.0.0.1:2222", VERSION, Role.OBSERVER)
    )
    assert server_actions[-1] == Established(
        PeerInfo("tool", "tcp://127.0.0.1:3333", VERSION, Role.OBSERVER)
    )


@pytest.mark.parametrize(
    ("make_client", "read_only"),
    [
        (lambda: observer(), None),  # the server takes no observers
        (lambda: observer(b"s3cret"), b"read-only"),  # the cluster secret is not the read-only one
        (lambda: client(b"read-only"), b"read-only"),  # nor can a member use the read-only one
    ],
)
def test_a_role_needs_its_own_secret(
    make_client: Callable[[], ClientHandshake], read_only: bytes | None
) -> None:
    _, server_actions = run(make_client(), guarded_server(read_only))
    assert isinstance(failure(server_actions), AuthenticationFailed)


def test_the_role_cannot_be_changed_in_flight() -> None:
    # An observer's hello rewritten to claim membership: the server now proves
    # with the cluster secret, which the observer cannot check, and vice versa.
    c, s = observer(), guarded_server()
    hello = json.loads(c.start())
    del hello["role"]
    actions = s.receive(json.dumps(hello).encode())
    assert isinstance(failure(c.receive(sends(actions)[0])), AuthenticationFailed)


def test_an_unknown_role_is_malformed() -> None:
    c = client()
    hello = json.loads(c.start())
    hello["role"] = "admin"
    actions = server().receive(json.dumps(hello).encode())
    assert isinstance(failure(actions), MalformedFrame)
