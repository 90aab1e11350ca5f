"""Shared test helpers: tiny random models with a real tokenizer, and real PEFT adapters trained on them."""
