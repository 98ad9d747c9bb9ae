"""Who may open an association: deny by default."""

from __future__ import annotations

from dataclasses import dataclass

from dicomnode.config import IngressConfig


@dataclass(frozen=True)
class SenderPolicy:
    """The allow-list of calling AE titles, each optionally tied to a host.

    Parameters
    ----------
    allow_any : bool
        Accept every calling AE title.
    allowed : frozenset of (ae_title, host or None)
        The senders; a ``None`` host accepts that AE title from anywhere.
    """

    allow_any: bool
    allowed: frozenset[tuple[str, str | None]]

    @classmethod
    def from_config(cls, config: IngressConfig) -> SenderPolicy:
        """Build the policy from the ``ingress`` section."""
        return cls(
            allow_any=config.allow_any,
            allowed=frozenset((s.ae_title, s.host) for s in config.allowed_senders),
        )

    def accepts(self, calling_ae: str, host: str) -> bool:
        """Whether ``calling_ae`` connecting from ``host`` may associate."""
        if self.allow_any:
            return True
        title = calling_ae.strip()
        return (title, None) in self.allowed or (title, host) in self.allowed
