"""promptswap server: configuration, model loading, the engine and the HTTP front end."""
