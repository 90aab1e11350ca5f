"""The HTTP front end: FastAPI routes that validate, submit to the engine and stream back. Never imports torch."""
