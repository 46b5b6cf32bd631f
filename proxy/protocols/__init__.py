"""The wire protocols a client may speak, each a codec between its frames and the session's
typed inputs and events (``proxy.protocols.codec.Codec``)."""
