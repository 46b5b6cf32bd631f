"""The names a client of a vendor's protocol may give the model: the served name, the
configured aliases and, unless the deployment makes the list strict, the vendor's own names
for this kind of model (so a client keeps its model and changes only its server URL)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ModelNames:
    """The names a client may give the model: the served one and its aliases."""

    served: str
    aliases: frozenset[str]

    @classmethod
    def of(
        cls, served: str, aliases: tuple[str, ...], *, strict: bool, vendor: tuple[str, ...]
    ) -> ModelNames:
        """``strict``: only the served name and the configured aliases, not ``vendor``'s names."""
        known = aliases if strict else (*aliases, *vendor)
        return cls(served, frozenset(known))

    def accepts(self, name: str) -> bool:
        return name == self.served or name in self.aliases

    def listed(self) -> str:
        return ", ".join([self.served, *sorted(self.aliases)])
