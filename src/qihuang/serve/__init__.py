"""Serving (#8): engine, retrieval with citations, OpenAI-compatible API, terminal and web chat."""
