"""The FastAPI search service."""
