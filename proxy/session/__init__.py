"""One client connection's session: pure, synchronous, no sockets, no clocks, no wire format.

This package's public face: the session, why it winds down, and (in ``proxy.session.inputs``,
``proxy.session.events`` and ``proxy.session.actions``) what goes in and what comes out.
Nothing outside the package imports its underscored modules.
"""

from proxy.session._lifecycle import WindDown
from proxy.session._session import Session

__all__ = ["Session", "WindDown"]
