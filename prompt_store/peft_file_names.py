"""The names of the files PEFT's `save_pretrained` writes: the reader and the store's file layer both use them."""

CONFIG_FILE = "adapter_config.json"
MODEL_FILE = "adapter_model.safetensors"
PICKLED_MODEL_FILE = "adapter_model.bin"  # older PEFT's torch.save format, refused (it would unpickle)
