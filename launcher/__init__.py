"""Turns a machine into a running service: model ready, delay patched, vLLM supervised and
the proxy in front."""
