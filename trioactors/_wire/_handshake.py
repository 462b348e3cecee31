"""The connection handshake of the network transports, as a sans-IO state machine.

Theory of operation
-------------------

Two nodes that open a connection first prove to each other that they know
the cluster secret, agree on the protocol version, and learn each other's
name and advertised address. The secret never crosses the wire::

    client                                         server
    Hello{version, node, address, nonce_c}  --->
                                            <---   ServerHello{version, node, address,
                                                               nonce_s, proof_s}
    (check proof_s)
    Proof{proof_c}                          --->
                                                   (check proof_c)
                                            <---   Welcome  or  Rejected{reason}

``proof_s = HMAC-SHA256(secret, "server" | nonce_c | nonce_s | names...)`` and
``proof_c = HMAC-SHA256(secret, "client" | nonce_s | nonce_c | names...)``,
where ``names...`` are both nodes' names and addresses and the version,
each length-prefixed. Each side picks a fresh 32-byte nonce, so a proof can
be neither replayed nor reflected back (the labels differ), and binding the
names means neither hello can be altered in flight without the proofs
failing. The handshake authenticates the peers; it does not protect the
frames that follow (use TLS for that on an untrusted network).

Roles: a client says in its hello whether it connects as a ``member`` (the
default, proven with the cluster secret) or as an ``observer`` (proven with
the cluster's *read-only* secret: an operator's tool that may only send
read-only queries, see :func:`trioactors.read_only`). Both proofs are made
with the key of the requested role, and the role is bound into them, so it
cannot be changed in flight. A server that has no read-only secret rejects
observers ("auth").

An empty secret is just another key: when *both* sides have an empty secret
the proofs match and the handshake succeeds (no authentication: tests and
trusted networks only). A side that has a secret rejects any peer that cannot
prove it, including a peer with an empty secret.

Messages are small JSON objects (UTF-8 bytes) with a ``"type"`` tag, at most
:data:`MAX_MESSAGE_SIZE` bytes; the transport carries each in one frame.

States (:class:`HandshakeState`): a client goes IDLE -> HELLO_SENT ->
PROOF_SENT -> ESTABLISHED; a server goes AWAIT_HELLO -> AWAIT_PROOF ->
ESTABLISHED. Either may end in FAILED instead.

Events are the received messages (``receive(data)``); actions are
:class:`Send` (a message for the peer), :class:`Established` (the
authenticated peer) and :class:`Failed` (a :class:`RemoteProtocolError` to
raise after sending any preceding ``Send``). Invariants:

- ``receive`` never raises for anything the peer sends; bad input becomes
  ``Failed(MalformedFrame(...))``. Misuse by the caller (receiving after the
  end) raises :class:`LocalProtocolError`.
- ``Established`` is returned at most once, and only after the peer's proof
  was verified with :func:`hmac.compare_digest`.
- A version mismatch is detected from the ``version`` field alone, before the
  rest of the hello is validated, so future versions are told "version"
  rather than "malformed".
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import os
from typing import TYPE_CHECKING, Final, TypeAlias, final

import attrs

from .._errors import (
    AuthenticationFailed,
    LocalProtocolError,
    MalformedFrame,
    ProtocolVersionMismatch,
    RemoteProtocolError,
)

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "MAX_MESSAGE_SIZE",
    "MAX_NAME_LENGTH",
    "NONCE_SIZE",
    "Action",
    "ClientHandshake",
    "Established",
    "Failed",
    "HandshakeState",
    "Hello",
    "Message",
    "PeerInfo",
    "Proof",
    "Rejected",
    "Role",
    "Send",
    "ServerHandshake",
    "ServerHello",
    "Welcome",
    "decode_message",
    "encode_message",
]

NONCE_SIZE: Final = 32
"""Bytes of randomness each side contributes."""
MAX_MESSAGE_SIZE: Final = 4096
"""Largest handshake message accepted, in bytes."""
MAX_NAME_LENGTH: Final = 255
"""Longest node name or address accepted in a hello."""
_PROOF_SIZE: Final = hashlib.sha256().digest_size

REJECT_REASONS: Final = frozenset({"version", "auth", "malformed"})


class Role(enum.Enum):
    """What an authenticated peer may do.

    .. versionadded:: 0.1
    """

    MEMBER = "member"
    """A node of the cluster (proved the cluster secret): may send anything."""
    OBSERVER = "observer"
    """A read-only tool (proved the read-only secret): may send read-only queries only."""


# -- messages -----------------------------------------------------------------------


@final
@attrs.frozen
class Hello:
    """The client's opening message."""

    version: int
    node: str
    address: str
    nonce: bytes
    role: Role = Role.MEMBER


@final
@attrs.frozen
class ServerHello:
    """The server's answer: its identity, its nonce and its proof."""

    version: int
    node: str
    address: str
    nonce: bytes
    proof: bytes


@final
@attrs.frozen
class Proof:
    """The client's proof that it knows the secret."""

    proof: bytes


@final
@attrs.frozen
class Welcome:
    """The server accepted the client: the connection is established."""


@final
@attrs.frozen
class Rejected:
    """The handshake failed; ``reason`` is ``"version"``, ``"auth"`` or ``"malformed"``."""

    reason: str
    version: int | None = None
    """The rejecting side's protocol version (set when ``reason == "version"``)."""


Message: TypeAlias = Hello | ServerHello | Proof | Welcome | Rejected


def encode_message(message: Message) -> bytes:
    """Encode one handshake message as compact JSON bytes.

    Args:
      message: The message to encode.

    Returns:
      The UTF-8 JSON encoding, one object with a ``"type"`` tag.
    """
    obj: dict[str, str | int | None]
    match message:
        case Hello(version, node, address, nonce, role):
            obj = {"type": "hello", "version": version, "node": node, "address": address}
            obj["nonce"] = nonce.hex()
            if role is not Role.MEMBER:
                obj["role"] = role.value
        case ServerHello(version, node, address, nonce, proof):
            obj = {"type": "server-hello", "version": version, "node": node, "address": address}
            obj["nonce"] = nonce.hex()
            obj["proof"] = proof.hex()
        case Proof(proof):
            obj = {"type": "proof", "proof": proof.hex()}
        case Welcome():
            obj = {"type": "welcome"}
        case Rejected(reason, version):
            obj = {"type": "rejected", "reason": reason}
            if version is not None:
                obj["version"] = version
    return json.dumps(obj, separators=(",", ":")).encode()


def _reject_constant(name: str) -> object:
    raise MalformedFrame(f"handshake message contains the non-JSON constant {name}")


def _load(data: bytes) -> dict[str, object]:
    """Parse ``data`` as one JSON object, or raise MalformedFrame."""
    if len(data) > MAX_MESSAGE_SIZE:
        raise MalformedFrame(
            f"handshake message of {len(data)} bytes exceeds {MAX_MESSAGE_SIZE} bytes"
        )
    try:
        obj: object = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except MalformedFrame:
        raise
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise MalformedFrame(f"handshake message is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise MalformedFrame(f"handshake message must be a JSON object, not {type(obj).__name__}")
    return {str(key): value for key, value in obj.items()}


def _field_int(obj: dict[str, object], key: str) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise MalformedFrame(f"handshake field {key!r} must be an integer, not {value!r:.40}")
    return value


def _field_str(obj: dict[str, object], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value or len(value) > MAX_NAME_LENGTH:
        raise MalformedFrame(
            f"handshake field {key!r} must be a non-empty string of at most "
            f"{MAX_NAME_LENGTH} characters, not {value!r:.40}"
        )
    return value


def _field_hex(obj: dict[str, object], key: str, size: int) -> bytes:
    value = obj.get(key)
    if not isinstance(value, str) or len(value) != 2 * size:
        raise MalformedFrame(f"handshake field {key!r} must be {size} hex-encoded bytes")
    try:
        return bytes.fromhex(value)
    except ValueError as exc:
        raise MalformedFrame(f"handshake field {key!r} must be {size} hex-encoded bytes") from exc


def _decode(obj: dict[str, object]) -> Message:
    kind = obj.get("type")
    match kind:
        case "hello":
            role = obj.get("role", Role.MEMBER.value)
            if role not in (Role.MEMBER.value, Role.OBSERVER.value):
                raise MalformedFrame(f"unknown role {role!r:.40} in hello")
            return Hello(
                version=_field_int(obj, "version"),
                node=_field_str(obj, "node"),
                address=_field_str(obj, "address"),
                nonce=_field_hex(obj, "nonce", NONCE_SIZE),
                role=Role(role),
            )
        case "server-hello":
            return ServerHello(
                version=_field_int(obj, "version"),
                node=_field_str(obj, "node"),
                address=_field_str(obj, "address"),
                nonce=_field_hex(obj, "nonce", NONCE_SIZE),
                proof=_field_hex(obj, "proof", _PROOF_SIZE),
            )
        case "proof":
            return Proof(proof=_field_hex(obj, "proof", _PROOF_SIZE))
        case "welcome":
            return Welcome()
        case "rejected":
            reason = obj.get("reason")
            if not isinstance(reason, str) or reason not in REJECT_REASONS:
                raise MalformedFrame(f"unknown rejection reason {reason!r:.40}")
            version = _field_int(obj, "version") if "version" in obj else None
            return Rejected(reason=reason, version=version)
        case _:
            raise MalformedFrame(f"unknown handshake message type {kind!r:.40}")


def decode_message(data: bytes) -> Message:
    """Decode one handshake message.

    Args:
      data: The received bytes.

    Returns:
      The decoded message.

    Raises:
      MalformedFrame: ``data`` is not a valid handshake message (bad JSON,
        unknown type, missing or mistyped field, too large).
    """
    return _decode(_load(data))


# -- the machines -------------------------------------------------------------------


class HandshakeState(enum.Enum):
    """Where a handshake machine is."""

    IDLE = "idle"
    HELLO_SENT = "hello-sent"
    PROOF_SENT = "proof-sent"
    AWAIT_HELLO = "await-hello"
    AWAIT_PROOF = "await-proof"
    ESTABLISHED = "established"
    FAILED = "failed"


@final
@attrs.frozen
class PeerInfo:
    """What a handshake learned about the peer."""

    node: str
    address: str
    version: int
    role: Role = Role.MEMBER


@final
@attrs.frozen
class Send:
    """Action: send ``message`` to the peer (in one frame)."""

    message: bytes


@final
@attrs.frozen
class Established:
    """Action: the peer is authenticated; the connection may carry frames."""

    peer: PeerInfo


@final
@attrs.frozen
class Failed:
    """Action: the handshake failed; close the connection (after any ``Send``)."""

    error: RemoteProtocolError


Action: TypeAlias = Send | Established | Failed


def _transcript(label: bytes, *parts: bytes) -> bytes:
    # Length-prefix every part so that no two different inputs share a transcript.
    out = [label]
    for part in parts:
        out += [len(part).to_bytes(4, "big"), part]
    return b"".join(out)


def _mac(secret: bytes, label: bytes, *parts: bytes) -> bytes:
    return hmac.new(secret, _transcript(label, *parts), hashlib.sha256).digest()


def _names(client: Hello, server_node: str, server_address: str, version: int) -> list[bytes]:
    names = [
        client.node.encode(),
        client.address.encode(),
        server_node.encode(),
        server_address.encode(),
        str(version).encode(),
    ]
    if client.role is not Role.MEMBER:
        names.append(client.role.value.encode())
    return names


def _check_identity(node: str, address: str) -> None:
    for value in (node, address):
        if not value or len(value) > MAX_NAME_LENGTH:
            raise LocalProtocolError(
                f"node names and addresses must be 1 to {MAX_NAME_LENGTH} characters, "
                f"not {value!r:.40}"
            )


class _Machine:
    """What both sides share: state, identity and the failure helpers."""

    state: HandshakeState

    def __init__(
        self,
        *,
        node: str,
        address: str,
        secret: bytes,
        version: int,
        random_bytes: Callable[[int], bytes],
    ) -> None:
        _check_identity(node, address)
        self.node = node
        self.address = address
        self.version = version
        self._secret = secret
        self._nonce = random_bytes(NONCE_SIZE)
        if len(self._nonce) != NONCE_SIZE:
            raise LocalProtocolError(f"random_bytes({NONCE_SIZE}) returned {len(self._nonce)}")
        self.claimed: PeerInfo | None = None
        """The identity the peer claimed (set once its hello arrived, even if it then failed)."""

    def _fail(self, error: RemoteProtocolError, reject: str | None = None) -> list[Action]:
        self.state = HandshakeState.FAILED
        actions: list[Action] = []
        if reject is not None:
            version = self.version if reject == "version" else None
            actions.append(Send(encode_message(Rejected(reject, version))))
        actions.append(Failed(error))
        return actions

    def _parse(self, data: bytes) -> Message | list[Action]:
        """Decode ``data``, or return the actions that fail the handshake."""
        if self.state in (HandshakeState.ESTABLISHED, HandshakeState.FAILED):
            raise LocalProtocolError(f"the handshake is over ({self.state.value})")
        try:
            obj = _load(data)
            # Look at the version before anything else, so that a peer of another
            # version hears "version", whatever else it changed.
            version = obj.get("version")
            if (
                obj.get("type") in ("hello", "server-hello")
                and isinstance(version, int)
                and not isinstance(version, bool)
                and version != self.version
            ):
                node = obj.get("node")
                if isinstance(node, str):
                    self.claimed = PeerInfo(node[:MAX_NAME_LENGTH], "", version)
                return self._fail(
                    ProtocolVersionMismatch(
                        f"peer speaks protocol version {version}, we speak {self.version}; "
                        "run the same trioactors version on every node"
                    ),
                    reject="version",
                )
            message = _decode(obj)
        except MalformedFrame as exc:
            return self._fail(exc, reject="malformed")
        if isinstance(message, Rejected):
            return self._rejected(message)
        return message

    def _rejected(self, message: Rejected) -> list[Action]:
        self.state = HandshakeState.FAILED
        error: RemoteProtocolError
        match message.reason:
            case "version":
                error = ProtocolVersionMismatch(
                    f"peer rejected our protocol version {self.version} "
                    f"(it speaks {message.version}); run the same trioactors version everywhere"
                )
            case "auth":
                error = AuthenticationFailed(
                    "peer rejected our proof: the nodes do not share the same secret"
                )
            case _:
                error = MalformedFrame("peer found our handshake malformed")
        return [Failed(error)]

    def _unexpected(self, message: Message) -> list[Action]:
        return self._fail(
            MalformedFrame(
                f"unexpected {type(message).__name__} in handshake state {self.state.value}"
            ),
            reject="malformed",
        )


@final
class ClientHandshake(_Machine):
    """The connecting side's handshake.

    Call :meth:`start` for the first message, then feed every received
    message to :meth:`receive` and carry out the actions it returns, in order.

    Args:
      node: Our node name.
      address: The address at which peers reach us (sent to the server).
      secret: The key of ``role``: the cluster secret for a member, the
        read-only secret for an observer (may be empty: see the module docstring).
      version: Our wire protocol version.
      random_bytes: Source of the nonce (``os.urandom``; pass a seeded one in tests).
      role: The role we connect as.

    Raises:
      LocalProtocolError: ``node`` or ``address`` is empty or too long.
    """

    def __init__(
        self,
        *,
        node: str,
        address: str,
        secret: bytes,
        version: int,
        random_bytes: Callable[[int], bytes] = os.urandom,
        role: Role = Role.MEMBER,
    ) -> None:
        super().__init__(
            node=node, address=address, secret=secret, version=version, random_bytes=random_bytes
        )
        self.state = HandshakeState.IDLE
        self.role = role
        self._hello = Hello(version, node, address, self._nonce, role)

    def start(self) -> bytes:
        """Return the hello to send first.

        Raises:
          LocalProtocolError: called twice.
        """
        if self.state is not HandshakeState.IDLE:
            raise LocalProtocolError("ClientHandshake.start() may be called only once")
        self.state = HandshakeState.HELLO_SENT
        return encode_message(self._hello)

    def receive(self, data: bytes) -> list[Action]:
        """Handle one message from the server.

        Args:
          data: The received message.

        Returns:
          The actions to carry out, in order.

        Raises:
          LocalProtocolError: called before :meth:`start` or after the end.
        """
        if self.state is HandshakeState.IDLE:
            raise LocalProtocolError("call ClientHandshake.start() before receive()")
        parsed = self._parse(data)
        if isinstance(parsed, list):
            return parsed
        match self.state, parsed:
            case HandshakeState.HELLO_SENT, ServerHello() as hello:
                self.claimed = PeerInfo(hello.node, hello.address, hello.version, self.role)
                names = _names(self._hello, hello.node, hello.address, self.version)
                expected = _mac(self._secret, b"server", self._nonce, hello.nonce, *names)
                if not hmac.compare_digest(expected, hello.proof):
                    return self._fail(
                        AuthenticationFailed(
                            f"server {hello.node!r} could not prove it knows the cluster "
                            "secret; give every node the same secret"
                        ),
                        reject="auth",
                    )
                proof = _mac(self._secret, b"client", hello.nonce, self._nonce, *names)
                self.state = HandshakeState.PROOF_SENT
                return [Send(encode_message(Proof(proof)))]
            case HandshakeState.PROOF_SENT, Welcome():
                assert self.claimed is not None
                self.state = HandshakeState.ESTABLISHED
                return [Established(self.claimed)]
            case _:
                return self._unexpected(parsed)


@final
class ServerHandshake(_Machine):
    """The accepting side's handshake.

    Feed every received message to :meth:`receive` and carry out the actions
    it returns, in order.

    Args:
      node: Our node name.
      address: Our advertised address.
      secret: The cluster secret (may be empty: see the module docstring).
      version: Our wire protocol version.
      random_bytes: Source of the nonce.
      read_only_secret: The key observers prove (None: observers are rejected).

    Raises:
      LocalProtocolError: ``node`` or ``address`` is empty or too long.
    """

    def __init__(
        self,
        *,
        node: str,
        address: str,
        secret: bytes,
        version: int,
        random_bytes: Callable[[int], bytes] = os.urandom,
        read_only_secret: bytes | None = None,
    ) -> None:
        super().__init__(
            node=node, address=address, secret=secret, version=version, random_bytes=random_bytes
        )
        self.state = HandshakeState.AWAIT_HELLO
        self._client: Hello | None = None
        self._read_only_secret = read_only_secret

    def receive(self, data: bytes) -> list[Action]:
        """Handle one message from the client.

        Args:
          data: The received message.

        Returns:
          The actions to carry out, in order.

        Raises:
          LocalProtocolError: called after the end.
        """
        parsed = self._parse(data)
        if isinstance(parsed, list):
            return parsed
        match self.state, parsed:
            case HandshakeState.AWAIT_HELLO, Hello() as hello:
                self._client = hello
                self.claimed = PeerInfo(hello.node, hello.address, hello.version, hello.role)
                if hello.role is Role.OBSERVER:
                    if self._read_only_secret is None:
                        return self._fail(
                            AuthenticationFailed(
                                f"observer {hello.node!r} refused: this node has no "
                                "read-only secret, so it accepts no read-only peers"
                            ),
                            reject="auth",
                        )
                    self._secret = self._read_only_secret
                names = _names(hello, self.node, self.address, self.version)
                proof = _mac(self._secret, b"server", hello.nonce, self._nonce, *names)
                self.state = HandshakeState.AWAIT_PROOF
                reply = ServerHello(self.version, self.node, self.address, self._nonce, proof)
                return [Send(encode_message(reply))]
            case HandshakeState.AWAIT_PROOF, Proof(proof):
                assert self._client is not None
                assert self.claimed is not None
                names = _names(self._client, self.node, self.address, self.version)
                expected = _mac(self._secret, b"client", self._nonce, self._client.nonce, *names)
                if not hmac.compare_digest(expected, proof):
                    which = "read-only" if self.claimed.role is Role.OBSERVER else "cluster"
                    return self._fail(
                        AuthenticationFailed(
                            f"peer claiming to be {self.claimed.node!r} could not prove it "
                            f"knows the {which} secret; give every node the same secret"
                        ),
                        reject="auth",
                    )
                self.state = HandshakeState.ESTABLISHED
                return [Send(encode_message(Welcome())), Established(self.claimed)]
            case _:
                return self._unexpected(parsed)
