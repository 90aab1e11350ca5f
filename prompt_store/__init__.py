"""Soft-prompt files: PEFT formats, validation, the durable store and the registry of task versions."""
