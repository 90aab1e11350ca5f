"""promptswap's device kernels: one per file, each a Triton kernel, its launcher and its torch reference.

CUDA tensors take the Triton kernel, CPU tensors the reference. Paged attention has two kernels over one contract:
paged_attention_reference.py (contract, reference, plan), paged_attention_metadata.py (the per-step metadata and
the argument checks), paged_{decode,prefill}_attention.py (the kernels), paged_attention_cpu.py (the torch path the
engine runs on CPU, with its per-step plan), paged_attention.py (the dispatcher).
This package shares its import name with the Hugging Face Hub `kernels` package that transformers probes for; it
deliberately defines no `__version__` and none of that package's API, and tests/kernels/test_kernels_name.py proves
transformers never takes it for the Hub one.
"""
