"""The web app: the operator's HMI, the REST API, live events (SSE) and /metrics."""
