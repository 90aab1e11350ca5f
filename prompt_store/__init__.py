"""Soft-prompt files: PEFT formats, validation, the durable store and the registry of task versions.

Layout and crash-safety argument: docs/prompt_store.md.
"""
