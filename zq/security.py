"""CURVE security: key files, socket setup and the ZAP authenticator.

A key directory made by ``zq keys generate DIR`` holds::

    DIR/ventilator.key_secret  DIR/ventilator.key     the ventilator's pair
    DIR/sink.key_secret        DIR/sink.key           the sink's pair
    DIR/client.key_secret      DIR/client.key         a client identity
    DIR/worker.key_secret      DIR/worker.key         a worker identity
    DIR/clients/*.key                                 public keys allowed to submit
    DIR/workers/*.key                                 public keys allowed to take tasks

The ventilator and the sink are CURVE servers; workers and clients are CURVE
clients that know the servers' public keys.  A ZAP authenticator (pyzmq's
``zmq.auth``) admits only listed keys, per socket: the ventilator's *clients*
endpoint admits ``clients/``, its *workers* endpoint ``workers/``, and the sink
admits both (plus the ventilator) and tells the sink each peer's role, so a
client key cannot post results.  Everything on a secured socket is encrypted.
"""

from __future__ import annotations

import collections
import logging
import os
import shutil
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from .errors import ConfigError

log = logging.getLogger("zq.security")

SERVERS = ("ventilator", "sink")
ROLES = ("client", "worker")


def generate(directory: str, name: Optional[str] = None, role: str = "client") -> list[str]:
    """Create a cluster's keys in ``directory`` (or one more identity ``name`` of ``role``).

    Returns the files written.  Existing pairs are never overwritten.
    """
    os.makedirs(directory, exist_ok=True)
    for sub in ("clients", "workers"):
        os.makedirs(os.path.join(directory, sub), exist_ok=True)
    written: list[str] = []

    def pair(stem: str) -> str:
        public = os.path.join(directory, f"{stem}.key")
        if not os.path.exists(public):
            pub, sec = zmq.auth.create_certificates(directory, stem)
            os.chmod(sec, 0o600)
            written.extend([pub, sec])
        return public

    if name is None:
        for server in SERVERS:
            pair(server)
        stems = [("client", "client"), ("worker", "worker")]
    else:
        if role not in ROLES:
            raise ConfigError(f"role must be one of {', '.join(ROLES)}")
        if not name.replace("-", "").replace("_", "").isalnum() or name in SERVERS:
            raise ConfigError(f"key name {name!r} must be letters, digits, - or _ (and not a server's)")
        stems = [(name, role)]
    for stem, r in stems:
        public = pair(stem)
        dest = os.path.join(directory, f"{r}s", f"{stem}.key")
        if not os.path.exists(dest):
            shutil.copyfile(public, dest)
            written.append(dest)
    return written


@dataclass(frozen=True)
class Keys:
    """A key directory as one node sees it; ``name`` picks its own key pair."""

    directory: str
    name: str

    @classmethod
    def load(cls, directory: str, name: str, servers: tuple[str, ...] = (),
             lists: tuple[str, ...] = ()) -> "Keys":
        """Check now, with the file named, every key this node will need: its own pair,
        the public keys of ``servers`` it connects to, the ``lists`` (``clients``,
        ``workers``) it admits.  A mistake raises ``ConfigError`` (one line)."""
        keys = cls(os.path.abspath(directory), name)
        if not os.path.isdir(keys.directory):
            raise ConfigError(f"key directory {keys.directory} does not exist "
                              f"(zq keys generate {directory} makes one)")
        keys.own()
        for server in servers:
            keys.server(server)
        for kind in lists:
            keys.allowed(kind)
        return keys

    def _read(self, path: str, secret: bool) -> tuple[bytes, Optional[bytes]]:
        if not os.path.exists(path):
            raise ConfigError(f"key file {path} does not exist (see zq keys generate)")
        try:
            pub, sec = zmq.auth.load_certificate(path)
        except OSError as exc:
            raise ConfigError(f"cannot read key file {path}: {exc.strerror or exc}") from None
        except (ValueError, TypeError, KeyError, UnicodeDecodeError):
            raise ConfigError(f"key file {path} is not a CURVE key file (zq keys generate writes them)") from None
        if not pub or len(pub) != 40 or (sec is not None and len(sec) != 40):
            raise ConfigError(f"key file {path} is not a CURVE key file (no 40-character z85 key)")
        if secret and not sec:
            raise ConfigError(f"key file {path} holds no secret key (it is a public key file)")
        return pub, sec

    def own(self) -> tuple[bytes, bytes]:
        pub, sec = self._read(os.path.join(self.directory, f"{self.name}.key_secret"), True)
        assert sec is not None
        return pub, sec

    def server(self, name: str) -> bytes:
        """A server's public key (``ventilator`` or ``sink``)."""
        path = os.path.join(self.directory, f"{name}.key")
        if not os.path.exists(path):
            path = os.path.join(self.directory, f"{name}.key_secret")
        return self._read(path, False)[0]

    def allowed(self, kind: str) -> set[bytes]:
        """Public keys listed in ``clients/`` or ``workers/`` (z85)."""
        d = os.path.join(self.directory, kind)
        if not os.path.isdir(d):
            raise ConfigError(f"key directory {self.directory} has no {kind}/ folder")
        found: set[bytes] = set()
        for entry in sorted(os.listdir(d)):
            if entry.endswith(".key"):
                found.add(self._read(os.path.join(d, entry), False)[0])
        return found

    # -- sockets ----------------------------------------------------------------------
    def make_server(self, sock: zmq.Socket, domain: str) -> None:
        pub, sec = self.own()
        sock.curve_secretkey = sec
        sock.curve_publickey = pub
        sock.curve_server = True
        sock.zap_domain = domain.encode()

    def make_client(self, sock: zmq.Socket, server: str) -> None:
        pub, sec = self.own()
        sock.curve_secretkey = sec
        sock.curve_publickey = pub
        sock.curve_serverkey = self.server(server)


#: a refused key (from one address) is logged at most once per this many seconds
REFUSAL_LOG_INTERVAL = 60.0
_REFUSAL_MEMORY = 1024


class _KeyList:
    """A ZAP credentials provider: a key is admitted if listed; a refusal is reported."""

    def __init__(self, keys: set[bytes], kinds: tuple[str, ...], auth: "Authenticator") -> None:
        self.keys = keys
        self.kinds = kinds
        self.auth = auth

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self.keys:
            return True
        self.auth.refused(domain, key, self.kinds)
        return False


class Authenticator(ThreadAuthenticator):
    """ZAP handler admitting the key lists of each domain; User-Id = ``role:key``.

    Every refused key is logged (warning: the key, the peer's address, the endpoint; at
    most once per ``REFUSAL_LOG_INTERVAL`` per key and address, with the number refused
    meanwhile) and counted: ``on_refused`` is called (from the authenticator's thread).
    """

    def __init__(self, context: zmq.Context, keys: Keys, domains: dict[str, tuple[str, ...]],
                 on_refused: Optional[Callable[[], None]] = None) -> None:
        super().__init__(context, log=logging.getLogger("zq.security.zap"))
        self.directory = keys.directory
        self.roles: dict[bytes, str] = {}
        #: ZAP domain -> the endpoint bound in it (for the log; the node fills it in once bound)
        self.endpoints: dict[str, str] = {}
        self.on_refused = on_refused
        self._address = ""  # of the ZAP request being handled (one at a time, in our thread)
        self._refusals: collections.OrderedDict[tuple[bytes, str], list] = collections.OrderedDict()
        lists: dict[str, set[bytes]] = {}
        for kind, role in (("clients", "client"), ("workers", "worker")):
            ks = keys.allowed(kind)
            lists[kind] = ks
            for k in ks:
                self.roles.setdefault(k, role)
        for server in SERVERS:
            try:
                k = keys.server(server)  # z85 already, as in the clients/ and workers/ lists
            except ConfigError:
                continue
            lists[server] = {k}
            self.roles[k] = server
        self._domains = {d: _KeyList(set().union(*(lists.get(k, set()) for k in kinds)), kinds, self)
                         for d, kinds in domains.items()}

    @property
    def domains(self) -> list[str]:
        return list(self._domains)

    def start(self) -> None:
        super().start()
        for domain, provider in self._domains.items():
            self.configure_curve_callback(domain, provider)

    def handle_zap_message(self, msg: list[bytes]) -> Any:
        # frames: version, request id, domain, address, identity, mechanism, credentials
        self._address = msg[3].decode("utf-8", "replace") if len(msg) > 3 else ""
        return super().handle_zap_message(msg)

    def refused(self, domain: str, key: bytes, kinds: tuple[str, ...]) -> None:
        """A key not listed for ``domain`` was refused: count it, log it (rate-limited)."""
        if self.on_refused is not None:
            self.on_refused()
        now = time.monotonic()
        z = key.decode("ascii", "replace")
        entry = self._refusals.get((key, self._address))
        if entry is not None and now - entry[1] < REFUSAL_LOG_INTERVAL:
            entry[0] += 1
            return
        more = f" ({entry[0]} more refused since the last report)" if entry is not None and entry[0] else ""
        listed = " or ".join(f"{os.path.join(self.directory, k)}/" for k in kinds if k in ("clients", "workers"))
        log.warning("refused CURVE key %s from %s on %s (%s): it is not in %s%s", z,
                    self._address or "?", self.endpoints.get(domain, "?"), domain,
                    listed or "the servers' keys", more)
        self._refusals[(key, self._address)] = [0, now]
        self._refusals.move_to_end((key, self._address))
        while len(self._refusals) > _REFUSAL_MEMORY:
            self._refusals.popitem(last=False)

    def curve_user_id(self, client_public_key: bytes) -> str:
        z = zmq.utils.z85.encode(client_public_key)
        return f"{self.roles.get(z, 'unknown')}:{z.decode('ascii')}"


def peer_role(frame: Any) -> str:
    """The role ZAP gave the sender of a received frame ('' when not secured)."""
    try:
        uid = frame.get("User-Id")
    except (zmq.ZMQError, AttributeError, TypeError):
        return ""
    return uid.split(":", 1)[0] if uid else ""
