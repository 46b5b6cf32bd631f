"""One client connection's session: pure, synchronous, no sockets, no clocks, no wire format.

The public face of the package; nothing outside it imports its underscored modules.
"""

from proxy.session._session import Session

__all__ = ["Session"]
