"""The HTTP API: SSE /generate, health endpoints and the test page."""
