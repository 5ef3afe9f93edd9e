"""Memory-bounded inference: chunked streaming over time."""
