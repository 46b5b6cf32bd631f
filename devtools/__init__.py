"""Development tools: the fake vLLM and the proxy benchmark (the service and apps never import
them)."""
