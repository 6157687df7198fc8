"""The HTTP gateway: turns requests into pipeline runs and pipeline events into SSE or JSON."""
