"""The transports, by name: the one list every part of disagg asks (DESIGN §4).

Adding a transport is a module with a `transport.base.Transport` subclass and one `register(...)` line
below. `choose` resolves `--transport` for a node: a name is taken as given; `auto` asks each installed
transport in this order whether it suits the link and takes the first that does, with its reason (logged
by the node and served in its `/info`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from core.errors import ConfigError
from transport.base import KvLink, LinkFacts, Transport

log = logging.getLogger(__name__)
AUTO = "auto"
_TRANSPORTS: dict[str, Transport] = {}


def register(transport: Transport) -> Transport:
    """Add (or replace) a transport; the order of first registration is `auto`'s order of preference."""
    _TRANSPORTS[transport.name] = transport
    return transport


def unregister(name: str) -> None:
    """Remove a transport (tests that register one of their own)."""
    _TRANSPORTS.pop(name, None)


def names() -> tuple[str, ...]:
    """Every registered transport's name, in `auto`'s order of preference."""
    return tuple(_TRANSPORTS)


def choices() -> tuple[str, ...]:
    """What `--transport` and a cluster file's `transport` accept: the names and `auto`."""
    return (*names(), AUTO)


def known_choice(name: str) -> str:
    """`name` when `--transport` accepts it (`choices()`); ValueError naming the known ones otherwise (for a
    pydantic validator)."""
    if name not in choices():
        raise ValueError(f"unknown transport {name!r}; known: {', '.join(choices())}")
    return name


def get(name: str) -> Transport:
    """The transport called `name`; ConfigError naming the known ones otherwise."""
    try:
        return _TRANSPORTS[name]
    except KeyError:
        raise ConfigError(f"unknown transport {name!r}; known: {', '.join(choices())}") from None


def all_transports() -> tuple[Transport, ...]:
    """Every registered transport, in `auto`'s order of preference."""
    return tuple(_TRANSPORTS.values())


def connectors() -> tuple[str, ...]:
    """The transports that give vLLM a KV connector (all but `none`), in order: what a disaggregated cluster
    (a cluster file, `bench compare --transports`) can run."""
    probe = KvLink(role="decode")
    return tuple(t.name for t in _TRANSPORTS.values() if t.kv_transfer_config(probe) is not None)


@dataclass(frozen=True)
class Choice:
    """The transport a node runs, and why."""

    name: str
    reason: str


def choose(requested: str, facts: LinkFacts) -> Choice:
    """Resolve `requested` (a name or `auto`) for the link `facts` describe; ConfigError for an unknown name."""
    if requested != AUTO:
        get(requested)
        return Choice(requested, f"--transport {requested}")
    passed = []
    for transport in _TRANSPORTS.values():
        installed = transport.installed()
        fit = transport.fit_for_auto(facts) if installed.ok else installed
        if fit.ok:
            skipped = f" (not {'; not '.join(passed)})" if passed else ""
            return Choice(transport.name, f"auto: {fit.reason}{skipped}")
        passed.append(f"{transport.name}: {fit.reason}")
    raise ConfigError(f"--transport auto: no transport suits a link to {facts.peer_host} ({'; '.join(passed)})")


def candidates(facts: LinkFacts) -> list[tuple[str, bool, str]]:
    """(name, would auto pick it, why) for every transport, in order: what `doctor` shows for `auto`."""
    rows = []
    for transport in _TRANSPORTS.values():
        installed = transport.installed()
        fit = transport.fit_for_auto(facts) if installed.ok else installed
        rows.append((transport.name, fit.ok, fit.reason))
    return rows


def _register_builtins() -> None:
    from transport.nixl.plugin import NixlTransport
    from transport.none import NoTransport
    from transport.tcp.plugin import TcpTransport

    register(NixlTransport())
    register(TcpTransport())
    register(NoTransport())


_register_builtins()
