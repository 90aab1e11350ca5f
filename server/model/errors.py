"""Why the base model could not be loaded; start-up reports the message and exits."""


class ModelLoadError(Exception):
    """The model argument names nothing loadable, or fetching / converting it failed; the message says what to do."""
