"""Our top-level `kernels` package must never pass for the Hugging Face Hub `kernels` package.

transformers probes for the Hub package (`transformers.utils.import_utils.is_kernels_available`) and, when it
believes it found a version in [KERNELS_MIN_VERSION, KERNELS_MAX_VERSION), imports `get_kernel`, `kernelize` and
friends from `kernels` (`transformers.integrations.hub_kernels`), which ours does not have: model loading would
break. The probe finds our package with `importlib.util.find_spec("kernels")`, then reads a version:
  1. `importlib.metadata.version("kernels")`: a distribution named `kernels` (we must never be, or sit beside, one);
  2. else the distributions that `importlib.metadata.packages_distributions()` says ship `kernels`: ours is
     `promptswap` once installed, so the version in pyproject.toml must stay outside the range;
  3. else (our source tree on sys.path, not installed) it imports `kernels` and reads `kernels.__version__`, which
     we therefore never define.
The fact tests pin each of those; the subprocess tests show transformers working beside our package, installed or
not; the canary tests show that breaking a fact really would fool the probe, so the facts are the right ones.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
from packaging.version import Version
from transformers.utils.import_utils import KERNELS_MAX_VERSION, KERNELS_MIN_VERSION

import kernels

REPO_ROOT = Path(__file__).resolve().parents[2]
HUB_RANGE = f"[{KERNELS_MIN_VERSION}, {KERNELS_MAX_VERSION})"


def _in_hub_range(version: str) -> bool:
    return Version(KERNELS_MIN_VERSION) <= Version(version) < Version(KERNELS_MAX_VERSION)


def _project() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]


def test_our_package_has_no_version_attribute():
    assert not hasattr(kernels, "__version__"), (
        "kernels.__version__ is what transformers reads for an uninstalled source tree: with a value in "
        f"{HUB_RANGE} it takes our package for the Hub `kernels`. Put versions in pyproject.toml only."
    )


def test_our_package_offers_none_of_the_hub_api():
    hub_names = {
        "get_kernel",
        "kernelize",
        "LayerRepository",
        "register_kernel_mapping",
        "use_kernel_mapping",
        "use_kernel_forward_from_hub",
        "replace_kernel_forward_from_hub",
        "Mode",
        "Device",
    }
    assert not hub_names & set(vars(kernels)), "a Hub `kernels` name on our package invites mix-ups"


def test_our_distribution_is_not_called_kernels_and_its_version_is_outside_the_hub_range():
    project = _project()
    assert project["name"].lower().replace("_", "-") != "kernels"
    assert not _in_hub_range(project["version"]), (
        f"promptswap {project['version']} lies in transformers' accepted range {HUB_RANGE} for the Hub `kernels`; "
        "installed, it would be taken for that package. Skip this range."
    )


def test_no_installed_distribution_makes_kernels_look_like_the_hub_package():
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        importlib.metadata.version("kernels")  # the Hub package installed beside ours: one shadows the other
    for distribution in importlib.metadata.packages_distributions().get("kernels", []):
        version = importlib.metadata.version(distribution)
        assert not _in_hub_range(version), f"installed {distribution} {version} ships `kernels` in {HUB_RANGE}"


def _fake_install(site: Path, version: str) -> Path:
    """What `pip install .` leaves for the probe to read: a promptswap dist-info naming `kernels` a top-level."""
    dist_info = site / f"promptswap-{version}.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: promptswap\nVersion: {version}\n")
    (dist_info / "top_level.txt").write_text("kernels\nloadtest\nprompt_store\nserver\n")
    return site


def _run(script: str, *path: Path) -> tuple[int, str, str]:
    inherited = [os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([*map(str, path), *inherited]),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_VERBOSITY="error",
    )
    env.pop("TRITON_INTERPRET", None)
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=env,
        cwd=path[0],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return result.returncode, result.stdout, result.stderr


TRANSFORMERS_BESIDE_OURS = """
    import importlib.metadata, importlib.util, sys, tempfile
    import torch

    spec = importlib.util.find_spec("kernels")
    assert spec.origin == {origin!r}, f"`import kernels` finds {{spec.origin}}, not our package"
    distributions = set(importlib.metadata.packages_distributions().get("kernels", []))
    assert distributions == {distributions!r}, distributions

    from transformers.utils.import_utils import is_kernels_available
    assert is_kernels_available() is False, "transformers took our package for the Hub `kernels`"
    import transformers.integrations.hub_kernels as hub_kernels
    assert hub_kernels.is_kernels_available() is False
    try:
        hub_kernels.get_kernel("kernels-community/activation")
    except ImportError as error:
        assert "kernels" in str(error)
    else:
        raise AssertionError("hub_kernels.get_kernel worked without the Hub package")

    # With no distribution to ask, the probe imported our package to look for a `__version__`.
    assert ("kernels" in sys.modules) is {imported!r}
    if {run_llama!r}:
        from transformers import LlamaConfig, LlamaForCausalLM
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=61, hidden_size=24, intermediate_size=40, num_hidden_layers=2,
                             num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64)
        with tempfile.TemporaryDirectory() as folder:
            LlamaForCausalLM(config).eval().save_pretrained(folder)
            model = LlamaForCausalLM.from_pretrained(folder).eval()
        prompt = torch.tensor([[3, 14, 15, 9, 26]])
        generated = model.generate(prompt, max_new_tokens=4, do_sample=False, pad_token_id=0)
        assert generated.shape == (1, 9), generated.shape
        with torch.no_grad():
            logits = model(generated).logits
        assert logits.shape == (1, 9, 61) and torch.isfinite(logits).all()
    print("ok")
"""


@pytest.mark.parametrize("installed", [False, True], ids=["as-found", "installed"])
def test_transformers_works_beside_our_package(tmp_path, installed):
    """As found, promptswap is either not installed (this checkout on sys.path: the probe imports our package and
    looks for a `__version__`) or installed, editable as in CI (metadata answers with promptswap's version). The
    second case adds a promptswap install to be sure the metadata path is taken. The Llama runs in the first."""
    path = [REPO_ROOT]
    distributions = set(importlib.metadata.packages_distributions().get("kernels", []))
    if installed:
        path.append(_fake_install(tmp_path / "site", _project()["version"]))
        distributions.add("promptswap")
    script = TRANSFORMERS_BESIDE_OURS.format(
        origin=str(REPO_ROOT / "kernels" / "__init__.py"),
        distributions=distributions,
        imported=not distributions,
        run_llama=not installed,
    )
    returncode, stdout, stderr = _run(script, *path)
    assert returncode == 0 and stdout.strip().endswith("ok"), stderr[-3000:]


PROBE = """
    from transformers.utils.import_utils import is_kernels_available
    print(is_kernels_available())
"""

# An installed promptswap (CI installs it editable) answers the probe from metadata; hide it, as a checkout that
# is only on sys.path would, so the probe falls back to importing the package and reading `__version__`.
PROBE_AS_IF_NOT_INSTALLED = (
    """
    import importlib.metadata

    _installed = importlib.metadata.packages_distributions
    importlib.metadata.packages_distributions = lambda: {
        name: dists for name, dists in _installed().items() if name != "kernels"}
"""
    + PROBE
)


def test_canary_a_version_attribute_in_range_would_fool_transformers(tmp_path):
    """If this starts failing, transformers' probe changed: re-read it and update the facts above."""
    fake = tmp_path / "kernels"
    fake.mkdir()
    source = (REPO_ROOT / "kernels" / "__init__.py").read_text()
    (fake / "__init__.py").write_text(f"{source}\n__version__ = {KERNELS_MIN_VERSION!r}\n")
    _, stdout, stderr = _run(PROBE_AS_IF_NOT_INSTALLED, tmp_path)
    assert stdout.strip() == "True", stderr[-3000:]


def test_canary_an_installed_version_in_range_would_fool_transformers(tmp_path):
    """If this starts failing, transformers' probe changed: re-read it and update the facts above."""
    # the fake install comes first: a real one (CI's editable install, its egg-info in the checkout) must not answer
    _, stdout, stderr = _run(PROBE, _fake_install(tmp_path / "site", KERNELS_MIN_VERSION), REPO_ROOT)
    assert stdout.strip() == "True", stderr[-3000:]
