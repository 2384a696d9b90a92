"""origin: whether a mutation may come from where its Origin, Sec-Fetch-Site and Host say.

A web page in the operator's browser can send the admin listener a POST with no preflight
(a hidden form, a ``text/plain`` fetch): the browser adds ``Origin`` and, in current
browsers, ``Sec-Fetch-Site`` naming the page's site. A page whose DNS name was rebound to
127.0.0.1 is same-origin for the browser, but its requests carry its own name in ``Host``.
The admin API's middleware calls ``refusal`` for every request whose method is not safe
(RFC 9110 §9.2.1), with or without a token; a pure function, table-tested.

- ``Sec-Fetch-Site`` other than ``same-origin`` or ``none`` (user-initiated) is refused;
  ``same-site`` too: another port on localhost is the same site.
- An ``Origin`` (RFC 6454) must be the request's own: scheme http (https on a TLS
  listener) and a host:port equal to the request's Host. ``null`` is refused.
- ``Host`` (RFC 9110 §7.2) must name the admin listener: its configured host, or for a
  loopback listener localhost / 127.0.0.1 / [::1]; with the configured port, or the port
  bound when the config said 0. A wildcard listener (0.0.0.0, ::) accepts any Host (it
  cannot know its names) but still checks Origin.
Clients that are not browsers send neither Origin nor Sec-Fetch-Site and pass.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from proxy import Address

from .controller import ControlError

_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
_SAFE_FETCH_SITES = ("same-origin", "none")
_DEFAULT_PORT = {"http": 80, "https": 443}
_HOST = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9._-]+))(?::(?P<port>[0-9]{1,5}))?")


@dataclass(frozen=True, slots=True)
class AdminListener:
    """AdminListener: the admin listen address as ``refusal`` needs it; built once by make_app."""

    names: tuple[str, ...]   # host names a Host header may carry (lowercase, IPv6 without brackets)
    port: int                # the configured port; 0 = ephemeral, only the bound port counts
    wildcard: bool           # 0.0.0.0 or ::: any Host is accepted

    @classmethod
    def of(cls, address: Address) -> AdminListener:
        """AdminListener.of: the listener of config ``admin.listen``."""
        names: tuple[str, ...] = (address.host.lower(),)
        if address.is_loopback:
            names += tuple(n for n in _LOOPBACK_NAMES if n not in names)
        return cls(names, address.port, address.is_wildcard)

    def describe(self, bound_port: int) -> str:
        """describe: the Host values accepted, for the 403 message."""
        port = self.port or bound_port
        return ", ".join(f"[{n}]:{port}" if ":" in n else f"{n}:{port}" for n in self.names)


def refusal(listener: AdminListener, bound_port: int, host: str | None, origin: str | None,
            fetch_site: str | None, scheme: str = "http") -> ControlError | None:
    """refusal: the 403 a mutation gets for where it comes from, or None when it may proceed.

    ``bound_port`` is the port the request arrived on; ``host``, ``origin`` and
    ``fetch_site`` are the header values (None when absent); ``scheme`` the listener's.
    """
    if fetch_site is not None and fetch_site.strip().lower() not in _SAFE_FETCH_SITES:
        return ControlError("cross_origin", f"a mutation from a page of another site is refused "
                                            f"(Sec-Fetch-Site: {_shown(fetch_site)})")
    target = split_host(host, scheme) if host is not None else None
    if origin is not None:
        if target is None or _origin(origin) != (scheme, *target):
            return ControlError("cross_origin", "a mutation from another origin is refused "
                                                f"(Origin: {_shown(origin)})")
    if listener.wildcard:
        return None
    if host is None or target is None or target[0] not in listener.names \
            or target[1] not in (listener.port or bound_port, bound_port):
        given = "a request without Host" if host is None else f"Host {_shown(host)}"
        return ControlError("forbidden_host", f"{given} does not name the admin listener; "
                                              f"accepted: {listener.describe(bound_port)}")
    return None


def split_host(value: str, scheme: str = "http") -> tuple[str, int] | None:
    """split_host: a Host header's (lowercase host, port), the scheme's port when it names none."""
    match = _HOST.fullmatch(value.strip())
    if match is None:
        return None
    port = int(match["port"]) if match["port"] else _DEFAULT_PORT.get(scheme, 80)
    if not 0 < port <= 65535:
        return None
    if match["v6"]:
        try:
            return str(ipaddress.IPv6Address(match["v6"])), port
        except ValueError:
            return None
    return match["name"].lower(), port


def _origin(value: str) -> tuple[str, str, int] | None:
    """_origin: an Origin header's (scheme, host, port), or None for "null" and anything malformed."""
    text = value.strip()
    if text == "null" or "://" not in text:
        return None
    scheme, _, rest = text.partition("://")
    scheme = scheme.lower()
    if scheme not in _DEFAULT_PORT or "/" in rest:
        return None
    target = split_host(rest, scheme)
    return (scheme, *target) if target is not None else None


def _shown(value: str) -> str:
    """_shown: a header value as a message may show it: printable ASCII, cut short."""
    text = "".join(c if " " <= c <= "~" else "?" for c in value)
    return text if len(text) <= 60 else text[:57] + "..."
