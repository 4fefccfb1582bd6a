"""CURVE security for the cell's ZMQ links: who holds which key, and what each socket sets.

    link      server (binds)            clients (connect)
    camera    camera_bridge   PULL      camera_sender (the camera PC; sim_cell)    PUSH
    robot     robot_pc        PUB       robot_bridge; cell_observer (CellRun)      SUB
    command   robot_pc        PULL      chunk_executor                             PUSH

A keys folder (`cell_keys generate DIR`) holds one ZMQ certificate pair per role, in the files
`zmq.auth` reads and writes: `<role>.key` (public key) and `<role>.key_secret` (public and
secret key, mode 0600). Each program is given the folder (`curve_keys_dir`; '' = plain TCP)
and reads what its end of its link needs:

- a server: its own `<server>.key_secret`, and the `<client>.key` of each client role of the
  link found there. A ZAP handler (pyzmq's ThreadAuthenticator, one per ZMQ context) admits
  only those public keys, per link (the ZAP domain is the link's name); every other client's
  handshake fails and is counted (`refused`, and `handshake_failures` by the socket monitor).
- a client: its own `<role>.key_secret` and the server's `<server>.key`. Only a peer holding
  the server's secret key completes the handshake, so a client never talks to an impostor.

Everything on the link is then encrypted and authenticated (CurveZMQ): a peer without the keys
neither reads nor injects. A host needs only its own roles' secret files and its peers' public
files (docs/wire.md, "Securing the cell network").
"""
from __future__ import annotations

from dataclasses import dataclass, field
import logging
import os
from pathlib import Path
import stat

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from vla_insertion.core.config import ConfigError

_LOG = logging.getLogger(__name__)
PUBLIC_SUFFIX = '.key'
SECRET_SUFFIX = '.key_secret'


@dataclass(frozen=True)
class Link:
    server: str                    # the role that binds and holds the server key
    clients: tuple[str, ...]       # the roles allowed to connect


LINKS = {
    'camera': Link('camera_bridge', ('camera_sender',)),
    'robot': Link('robot_pc', ('robot_bridge', 'cell_observer')),
    'command': Link('robot_pc', ('chunk_executor',)),
}
ROLES = tuple(sorted({r for link in LINKS.values() for r in (link.server, *link.clients)}))


class CurveError(ConfigError):
    """A CURVE key is missing or unreadable: a start-up (configuration) error."""


@dataclass(frozen=True)
class LinkKeys:
    """What one end of one link holds (Z85-encoded keys, as zmq.auth reads them)."""

    link: str                      # a LINKS name; also the ZAP domain
    role: str                      # this end's role
    public: bytes                  # this end's public key
    secret: bytes                  # this end's secret key
    server_public: bytes = b''     # client: the server's public key
    clients: dict[bytes, str] = field(default_factory=dict)  # server: admitted key -> role

    @property
    def server(self) -> bool:
        return not self.server_public


def _read(path: Path, secret: bool) -> tuple[bytes, bytes | None]:
    if not path.is_file():
        raise CurveError(f'CURVE key {path} is missing (write the keys of the cell with '
                         '`cell_keys generate DIR`, then copy each host its own files)')
    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise CurveError(f'CURVE key {path} is unreadable: {exc}') from None
    if secret and secret_key is None:
        raise CurveError(f'CURVE key {path} holds no secret key')
    if secret and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        _LOG.warning(f'{path}: a secret key readable by other users (chmod 600 {path})')
    return public, secret_key


def link_keys(keys_dir: str | os.PathLike, link: str, role: str | None = None
              ) -> LinkKeys | None:
    """Read one end's keys of `link` from `keys_dir`: the server's (`role` None) or a client's.

    '' (no folder): None, plain TCP. Raises CurveError naming the missing or bad file.
    """
    if not str(keys_dir):
        return None
    if link not in LINKS:
        raise CurveError(f'no ZMQ link {link!r}; links: {sorted(LINKS)}')
    spec = LINKS[link]
    folder = Path(keys_dir).expanduser()
    if not folder.is_dir():
        raise CurveError(f'curve_keys_dir {folder} is not a folder')
    if role is None:
        public, secret = _read(folder / f'{spec.server}{SECRET_SUFFIX}', secret=True)
        clients = {}
        for client in spec.clients:
            path = folder / f'{client}{PUBLIC_SUFFIX}'
            if path.is_file():
                clients[_read(path, secret=False)[0]] = client
        if not clients:
            raise CurveError(f'no client of the {link} link has its public key in {folder} '
                             f'({", ".join(c + PUBLIC_SUFFIX for c in spec.clients)}): '
                             'nobody could connect')
        return LinkKeys(link, spec.server, public, secret, clients=clients)
    if role not in spec.clients:
        raise CurveError(f'{role!r} is not a client of the {link} link ({list(spec.clients)})')
    public, secret = _read(folder / f'{role}{SECRET_SUFFIX}', secret=True)
    server_public, _ = _read(folder / f'{spec.server}{PUBLIC_SUFFIX}', secret=False)
    return LinkKeys(link, role, public, secret, server_public=server_public)


class CurveLink:
    """Apply one end's keys to its sockets; on a server, admit only the link's clients.

    `keys` None: plain TCP, `secure` does nothing. A server needs the `context` its sockets
    are made in: the ZAP handler runs on it (one CurveLink with server keys per context).
    `close()` before the context is destroyed.
    """

    def __init__(self, keys: LinkKeys | None, context: zmq.Context | None = None) -> None:
        self.keys = keys
        self.refused = 0               # client handshakes the ZAP handler refused
        self._auth: ThreadAuthenticator | None = None
        if keys is not None and keys.server:
            if context is None:
                raise ValueError('a CURVE server needs its ZMQ context for the ZAP handler')
            self._auth = ThreadAuthenticator(context, log=_LOG.getChild('zap'))
            self._auth.start()
            self._auth.configure_curve_callback(keys.link, self)

    @property
    def enabled(self) -> bool:
        return self.keys is not None

    def callback(self, domain: str, client_key: bytes) -> bool:
        """ZAP: admit a client key of this link (called on the authenticator's thread)."""
        if self.keys is not None and client_key in self.keys.clients:
            return True
        self.refused += 1
        return False

    def secure(self, socket: zmq.Socket) -> None:
        """Set the CURVE options of a socket before it binds or connects."""
        keys = self.keys
        if keys is None:
            return
        socket.curve_secretkey = keys.secret
        socket.curve_publickey = keys.public
        if keys.server:
            socket.zap_domain = keys.link.encode()
            socket.curve_server = True
        else:
            socket.curve_serverkey = keys.server_public

    def describe(self) -> str:
        keys = self.keys
        if keys is None:
            return 'plain TCP (no CURVE keys)'
        if keys.server:
            return (f'CURVE as {keys.role}, admitting '
                    f'{", ".join(sorted(keys.clients.values()))}')
        return f'CURVE as {keys.role} to {LINKS[keys.link].server}'

    def close(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None


def generate_keys(folder: str | os.PathLike, roles: tuple[str, ...] = ROLES,
                  force: bool = False) -> list[Path]:
    """Write a certificate pair per role into `folder` (created 0700); return the files.

    Raises CurveError if a role's files exist and `force` is false (keys are never replaced
    by accident: every host holding the old public key would be locked out).
    """
    folder = Path(folder).expanduser()
    unknown = sorted(set(roles) - set(ROLES))
    if unknown:
        raise CurveError(f'unknown roles {unknown}; roles: {list(ROLES)}')
    existing = [folder / f'{r}{s}' for r in roles for s in (PUBLIC_SUFFIX, SECRET_SUFFIX)
                if (folder / f'{r}{s}').exists()]
    if existing and not force:
        raise CurveError(f'keys already in {folder}: {", ".join(p.name for p in existing)} '
                         '(--force replaces them)')
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    written = []
    old_umask = os.umask(0o077)            # the secret file is never readable by others
    try:
        for role in roles:
            for path in (folder / f'{role}{PUBLIC_SUFFIX}', folder / f'{role}{SECRET_SUFFIX}'):
                path.unlink(missing_ok=True)
            public, secret = zmq.auth.create_certificates(folder, role)
            os.chmod(public, 0o644)
            os.chmod(secret, 0o600)
            written += [Path(public), Path(secret)]
    finally:
        os.umask(old_umask)
    return written


def host_files(roles: tuple[str, ...]) -> list[str]:
    """Return the files a host running `roles` needs: their secret files, their peers' public."""
    secret = {f'{r}{SECRET_SUFFIX}' for r in roles}
    public = set()
    for link in LINKS.values():
        ends = (link.server, *link.clients)
        for role in roles:
            if role == link.server:
                public |= {f'{c}{PUBLIC_SUFFIX}' for c in link.clients}
            elif role in ends:
                public.add(f'{link.server}{PUBLIC_SUFFIX}')
    return sorted(secret) + sorted(public - {f'{r}{PUBLIC_SUFFIX}' for r in roles})
