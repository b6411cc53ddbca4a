"""Redis access by role (Redis ACLs): what an edge agent and the trainer may do in the model registry.

* ``edge`` (``pedstream-edge``): read the release orders, the general model's name and the
  versions' records and bytes; subscribe to the announce channel; write only the agents' status
  hash. It cannot sign (it has no private key) and cannot change what any camera serves.
* ``trainer`` (``pedstream-trainer``): everything under the registry prefixes (``*:models:*``:
  versions, orders, retraining requests), publish on the announce channel; no administrative or
  dangerous commands.

``provision`` creates both users (and ``pedstream-admin``) and turns the unauthenticated default
user off; ``pedstream stack`` does this for the redis-server it starts, and ``docker-compose.yml``
gives the same rules to its Redis (``redis_server_args``). Patterns are prefix-independent
(``*:models:...``), so one set of users serves every topic prefix.
"""

from __future__ import annotations

import secrets
from urllib.parse import quote, urlsplit, urlunsplit

import redis

EDGE_USER = "pedstream-edge"
TRAINER_USER = "pedstream-trainer"
ADMIN_USER = "pedstream-admin"
ROLES = {"edge": EDGE_USER, "trainer": TRAINER_USER, "admin": ADMIN_USER}

_CONNECTION = ["+ping", "+hello", "+auth", "+client|setname", "+select", "+quit", "+reset"]
RULES: dict[str, list[str]] = {
    "edge": [
        "resetkeys",
        "resetchannels",
        "%R~*:models:orders",
        "%R~*:models:current",
        "%R~*:models:version:*",
        "%RW~*:models:agents",
        "&*:models:announce",
        "-@all",
        "+get",
        "+hget",
        "+hgetall",
        "+hset",
        "+subscribe",
        "+unsubscribe",
        *_CONNECTION,
    ],
    "trainer": ["resetkeys", "resetchannels", "~*:models:*", "&*:models:*", "+@all", "-@dangerous", *_CONNECTION],
    "admin": ["~*", "&*", "+@all"],
}


def new_passwords() -> dict[str, str]:
    return {role: secrets.token_urlsafe(24) for role in ROLES}


def provision(admin: redis.Redis, passwords: dict[str, str]) -> None:
    """Create (or reset) the role users with these passwords, then switch the default user off.
    ``admin`` must be a connection allowed to run ``ACL SETUSER`` (the default user on a fresh
    redis-server, or ``pedstream-admin``)."""
    for role, user in ROLES.items():
        admin.execute_command("ACL", "SETUSER", user, "reset", "on", f">{passwords[role]}", *RULES[role])  # type: ignore[no-untyped-call]
    admin.execute_command("ACL", "SETUSER", "default", "off")  # type: ignore[no-untyped-call]


def role_url(url: str, role: str, password: str) -> str:
    """``url`` with the role's user and password in it (``redis://user:pass@host:port/db``)."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    netloc = f"{quote(ROLES[role], safe='')}:{quote(password, safe='')}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def redacted(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for logs and messages)."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def redis_server_args(passwords: dict[str, str]) -> list[str]:
    """The same users as ``redis-server`` command-line arguments (one argument per rule), for a
    Redis started elsewhere: ``docker-compose.yml``'s, with ``${REDIS_..._PASSWORD}`` as passwords."""
    args = []
    for role, user in ROLES.items():
        args += ["--user", user, "on", f">{passwords[role]}", *RULES[role]]
    return [*args, "--user", "default", "off"]


PASSWORD_ENV = {"edge": "REDIS_EDGE_PASSWORD", "trainer": "REDIS_TRAINER_PASSWORD", "admin": "REDIS_ADMIN_PASSWORD"}
"""The variables ``docker-compose.yml`` takes the role passwords from (its ``.env`` file)."""
