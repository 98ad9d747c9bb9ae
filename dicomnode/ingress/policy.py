"""Who may open an association, and to which called AE titles: deny by default."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from dicomnode.config import IngressConfig


@dataclass(frozen=True)
class SenderPolicy:
    """The allow-list of calling AE titles, each optionally tied to a host, and
    the called AE titles the node serves.

    Parameters
    ----------
    allow_any : bool
        Accept every calling AE title.
    allowed : frozenset of (ae_title, host or None)
        The senders; a ``None`` host accepts that AE title from anywhere.
    called : frozenset of str
        The called AE titles the node answers to; empty accepts any (for a
        policy built by hand; :meth:`from_config` always names at least one).
    """

    allow_any: bool
    allowed: frozenset[tuple[str, str | None]]
    called: frozenset[str] = frozenset()

    @classmethod
    def from_config(cls, config: IngressConfig, node_ae_title: str | None = None) -> SenderPolicy:
        """Build the policy from the ``ingress`` section.

        Parameters
        ----------
        config : IngressConfig
            The ``ingress`` section.
        node_ae_title : str, optional
            ``node.ae_title``: the one called AE title served when
            ``ingress.called_ae_titles`` is empty.
        """
        called = config.called_ae_titles or ((node_ae_title,) if node_ae_title else ())
        return cls(
            allow_any=config.allow_any,
            allowed=frozenset((s.ae_title, s.host) for s in config.allowed_senders),
            called=frozenset(title.strip() for title in called),
        )

    def serves(self, called_ae: str) -> bool:
        """Whether the node answers to ``called_ae`` (leading and trailing
        spaces are not significant; case is)."""
        return not self.called or called_ae.strip() in self.called

    def accepts(self, calling_ae: str, host: str) -> bool:
        """Whether ``calling_ae`` connecting from ``host`` may associate.

        Addresses compare as addresses, not text: an IPv4 sender seen on an
        IPv6 socket (``::ffff:10.0.0.5``) matches ``10.0.0.5``.
        """
        if self.allow_any:
            return True
        title = calling_ae.strip()
        if (title, None) in self.allowed:
            return True
        peer = _address(host)
        return any(
            ae == title and allowed_host is not None and _address(allowed_host) == peer
            for ae, allowed_host in self.allowed
        )


def _address(text: str) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return text
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)
