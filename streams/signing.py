"""Ed25519 signatures on model release orders: key pairs on disk, signing (trainer side), verifying
(edge side).

The registry holds the private key and signs only approved versions' release orders: the statement
signed (``ModelAnnouncement.release_statement``) covers the bytes' sha256, the version, its approval
number, the cameras it is for, the order's serial and kind, and the state. Edge agents hold only
the public key and refuse any model whose bytes, statement or signature do not match. Keys are PEM
files; the private one is written mode 0600.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from streams.errors import PedstreamError
from streams.records import CompiledArtifact, ModelAnnouncement

PRIVATE_NAME = "model-signing.key"
PUBLIC_NAME = "model-signing.pub"
KEYS_ENV = "PEDSTREAM_KEYS"


class VerificationError(PedstreamError):
    """A model's bytes do not match its sha256 or its signature: it must not be served."""


def default_keys_dir() -> Path:
    return Path(os.environ.get(KEYS_ENV) or Path.home() / ".pedstream" / "keys")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class KeyPaths:
    private: Path
    public: Path


def init_keys(folder: Path, overwrite: bool = False) -> KeyPaths:
    """Make a new key pair in ``folder`` (refuses to replace an existing one unless ``overwrite``)."""
    paths = KeyPaths(folder / PRIVATE_NAME, folder / PUBLIC_NAME)
    if paths.private.exists() and not overwrite:
        raise PedstreamError(f"{paths.private} exists: pass --force to replace the signing key (edge agents then need the new public key)")
    folder.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    fd = os.open(paths.private, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem)
    paths.public.write_bytes(public_pem)
    return paths


class Signer:
    def __init__(self, key: Ed25519PrivateKey) -> None:
        self.key = key

    @classmethod
    def load(cls, path: Path) -> Signer:
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise PedstreamError(f"{path}: cannot read the private signing key ({exc}); make one with `pedstream keys init`") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise PedstreamError(f"{path}: not an Ed25519 private key")
        return cls(key)

    def sign(self, data: bytes) -> str:
        return base64.b64encode(self.key.sign(data)).decode()

    def sign_order(self, order: ModelAnnouncement) -> ModelAnnouncement:
        """The order with its signature over its release statement."""
        return order.model_copy(update={"signature": self.sign(order.release_statement())})

    def sign_artifact(self, artifact: CompiledArtifact) -> CompiledArtifact:
        return artifact.model_copy(update={"signature": self.sign(artifact.statement())})


class Verifier:
    def __init__(self, key: Ed25519PublicKey) -> None:
        self.key = key

    @classmethod
    def load(cls, path: Path) -> Verifier:
        try:
            key = serialization.load_pem_public_key(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise PedstreamError(f"{path}: cannot read the public signing key ({exc})") from None
        if not isinstance(key, Ed25519PublicKey):
            raise PedstreamError(f"{path}: not an Ed25519 public key")
        return cls(key)

    def verify_order(self, order: ModelAnnouncement) -> None:
        """Raise ``VerificationError`` unless the order is an approved, signed one whose signature
        verifies over its release statement (checked before anything in it is acted on)."""
        if order.state != "approved" or not order.signature:
            raise VerificationError(f"version {order.version} is {order.state} and unsigned: only approved versions are signed")
        try:
            self.key.verify(base64.b64decode(order.signature, validate=True), order.release_statement())
        except (InvalidSignature, ValueError):
            raise VerificationError("signature does not verify with this agent's public key over this release order") from None

    def verify_artifact(self, data: bytes, artifact: CompiledArtifact) -> None:
        """Raise ``VerificationError`` unless the artifact's signature verifies over its statement and
        ``data`` has its digest."""
        if not artifact.signature:
            raise VerificationError(f"the {artifact.runtime} artifact of {artifact.version} is unsigned")
        try:
            self.key.verify(base64.b64decode(artifact.signature, validate=True), artifact.statement())
        except (InvalidSignature, ValueError):
            raise VerificationError(f"the {artifact.runtime} artifact of {artifact.version}: signature does not verify") from None
        actual = sha256_hex(data)
        if actual != artifact.sha256:
            raise VerificationError(f"artifact sha256 mismatch: announced {artifact.sha256[:12]}..., bytes have {actual[:12]}...")

    def verify(self, data: bytes, order: ModelAnnouncement) -> None:
        """``verify_order``, and ``data`` must have the sha256 the order names."""
        self.verify_order(order)
        actual = sha256_hex(data)
        if actual != order.sha256:
            raise VerificationError(f"sha256 mismatch: announced {order.sha256[:12]}..., bytes have {actual[:12]}...")
