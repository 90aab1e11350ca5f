"""Every kernel compiles for an H100 (sm_90), here, without a GPU.

The interpreter runs kernels as numpy and accepts code the compiler rejects (an `if` whose branches give a value
different types, say). Compiling ahead of time to a cubin with the ptxas that ships in the triton wheel catches
that class of bug in the normal suite. Launch-time behaviour on a real GPU is still untested here.
"""

from __future__ import annotations

import subprocess

import pytest

triton = pytest.importorskip("triton")
pytestmark = [pytest.mark.compiled, pytest.mark.filterwarnings("ignore:TRITON_DEFAULT_FP_FUSION")]

from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction

from kernels.embedding_gather import _embedding_gather_kernel
from kernels.kv_write import _kv_write_kernel
from kernels.paged_decode_attention import _paged_decode_attention_kernel
from kernels.paged_prefill_attention import _paged_prefill_attention_kernel

H100 = GPUTarget("cuda", 90, 32)
INDEX_POINTERS = ("block_tables_ptr", "prefix_lens_ptr", "own_lens_ptr", "query_start_loc_ptr")


def _compile(fn, pointers: dict[str, str], constexprs: dict) -> None:
    jitted = JITFunction(fn)
    signature, constants = {}, {}
    for index, param in enumerate(jitted.params):
        if param.name in constexprs:
            # String annotations (`from __future__ import annotations`) must still read as constexpr at launch.
            assert param.is_constexpr, f"{param.name} is not seen as tl.constexpr"
            signature[param.name] = "constexpr"
            constants[(index,)] = constexprs[param.name]
        elif param.name.endswith("_ptr"):
            signature[param.name] = pointers[param.name]
        else:
            signature[param.name] = "fp32" if param.name == "scale_log2" else "i32"
    compiled = triton.compile(ASTSource(jitted, signature, constants), target=H100)
    assert compiled.asm["cubin"]


@pytest.fixture(scope="module", autouse=True)
def nvidia_toolchain():
    try:
        from triton.backends.nvidia.compiler import get_ptxas_version
    except ImportError as error:
        pytest.skip(f"this triton has no CUDA backend: {error}")
    try:
        get_ptxas_version(H100.arch)
    except (OSError, subprocess.CalledProcessError, RuntimeError) as error:
        pytest.skip(f"no usable ptxas in this triton: {error}")


@pytest.mark.parametrize("dtype, index_dtype", [("fp16", "i32"), ("fp32", "i32"), ("bf16", "i64")])
def test_attention_kernels_compile(dtype, index_dtype):
    """int64 metadata too: the engine's step packs every index tensor into one int64 buffer."""
    pointers = {name: f"*{index_dtype}" for name in INDEX_POINTERS}
    pointers |= {name: f"*{dtype}" for name in ("query_ptr", "k_cache_ptr", "v_cache_ptr", "out_ptr")}
    precision = "ieee" if dtype == "fp32" else "tf32"
    _compile(
        _paged_decode_attention_kernel,
        pointers,
        dict(GROUP=3, BLOCK_G=16, BLOCK_D=64, BLOCK_N=32, DOT_PRECISION=precision),
    )
    _compile(
        _paged_prefill_attention_kernel,
        pointers,
        dict(GROUP=3, BLOCK_Q=21, BLOCK_M=64, BLOCK_D=64, BLOCK_N=32, MIN_QUERIES=2, DOT_PRECISION=precision),
    )


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_copy_kernels_compile(dtype):
    _compile(
        _kv_write_kernel,
        dict(
            key_ptr="*fp32",
            value_ptr="*fp32",
            k_cache_ptr=f"*{dtype}",
            v_cache_ptr=f"*{dtype}",
            slot_mapping_ptr="*i64",
        ),
        dict(BLOCK_ELEMENTS=256),
    )
    _compile(
        _embedding_gather_kernel,
        dict(token_ids_ptr="*i64", embedding_ptr=f"*{dtype}", prompt_rows_ptr="*fp32", out_ptr=f"*{dtype}"),
        dict(BLOCK_HIDDEN=1024),
    )
