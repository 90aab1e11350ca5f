"""Plain types that every layer shares (`prompt_store`, `kernels`, `server`); this package imports none of them."""
