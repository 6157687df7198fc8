"""Logging, tracing and metrics. Imported by the other packages; imports none of them."""
