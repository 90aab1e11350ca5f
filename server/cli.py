"""`promptswap serve | upload | list`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

from prompt_store.store_lock import StoreLock, StoreLockedError
from server.config import ConfigError, ServerConfig, add_serve_flags, load_config
from server.engine.client import EngineClient
from server.http.serve import run_server

ADAPTER_FILES = {"adapter_config": "adapter_config.json", "adapter_model": "adapter_model.safetensors"}
CLIENT_TIMEOUT_S = 300


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except ConfigError as exc:
        print(f"promptswap: {exc}", file=sys.stderr)
        return 2
    except StoreLockedError as exc:
        print(f"promptswap: {exc}", file=sys.stderr)
        return 1
    except ClientError as exc:
        print(f"promptswap: {exc}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="promptswap", description="One base model, many PEFT soft prompts.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the inference server")
    add_serve_flags(serve)
    serve.set_defaults(run=_serve)

    upload = commands.add_parser("upload", help="upload a PEFT adapter folder as TASK to a running server")
    upload.add_argument("task")
    upload.add_argument("adapter_dir", type=Path, help="folder with adapter_config.json and adapter_model.safetensors")
    _add_client_flags(upload)
    upload.set_defaults(run=_upload)

    listing = commands.add_parser("list", help="list the tasks of a running server")
    _add_client_flags(listing)
    listing.set_defaults(run=_list)
    return parser


def _add_client_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="server URL (default: from PROMPTSWAP_HOST / PROMPTSWAP_PORT)")
    parser.add_argument("--admin-token", dest="admin_token", help="admin token (default: PROMPTSWAP_ADMIN_TOKEN)")


def _serve(args: argparse.Namespace) -> int:
    flags = {name: getattr(args, name) for name in ("model", "model_id", "host", "port", "store", "admin_token")}
    config = load_config(flags)
    # Held for the life of the process, so a second server on this store fails here, before it binds its port.
    StoreLock(config.store.directory)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_server(config, EngineClient(config))


def _upload(args: argparse.Namespace) -> int:
    parts = {name: _read_adapter_file(args.adapter_dir / filename) for name, filename in ADAPTER_FILES.items()}
    body, content_type = _multipart(parts)
    client = _client(args)
    status, result = client.request(
        "PUT", f"/v1/admin/prompts/{urllib.parse.quote(args.task, safe='')}", body, content_type
    )
    action = "created" if status == 201 else "new version of"
    print(
        f"{action} task {result['task']}: version {result['version']}, {result['peft_type']} ({result['kind']}), "
        f"{result['num_virtual_tokens']} virtual tokens, {result['bytes']} bytes"
    )
    return 0


def _list(args: argparse.Namespace) -> int:
    _, result = _client(args).request("GET", "/v1/admin/prompts")
    print(f"{'TASK':<32} {'ACTIVE':>6} {'VERSIONS':<16} {'TYPE':<24} {'VTOKENS':>7}")
    for task in result["tasks"]:
        active = next(v for v in task["versions"] if v["is_active"])
        versions = ",".join(str(v["version"]) for v in task["versions"])
        print(
            f"{task['task']:<32} {task['active_version']:>6} {versions:<16} {active['peft_type']:<24} "
            f"{active['num_virtual_tokens']:>7}"
        )
    return 0


def _read_adapter_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ClientError(f"cannot read {path}: {exc.strerror}") from None


def _multipart(parts: dict[str, bytes]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    chunks = []
    for name, data in parts.items():
        header = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{ADAPTER_FILES[name]}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        )
        chunks += [header.encode(), data, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


class ClientError(Exception):
    """A client command failed; the message says why."""


class AdminClient:
    def __init__(self, url: str, admin_token: str | None):
        self.url = url.rstrip("/")
        self.admin_token = admin_token

    def request(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None):
        headers = {"Authorization": f"Bearer {self.admin_token}"} if self.admin_token else {}
        if content_type:
            headers["Content-Type"] = content_type
        request = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=CLIENT_TIMEOUT_S) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise ClientError(f"{method} {path}: HTTP {exc.code}: {_error_message(exc.read())}") from None
        except urllib.error.URLError as exc:
            raise ClientError(f"cannot reach {self.url}: {exc.reason}") from None


def _error_message(body: bytes) -> str:
    try:
        return json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        return body.decode(errors="replace")


def _client(args: argparse.Namespace) -> AdminClient:
    config: ServerConfig = load_config({"admin_token": args.admin_token})
    host = "127.0.0.1" if config.host in ("0.0.0.0", "::") else config.host
    return AdminClient(args.url or f"http://{host}:{config.port}", config.admin_token)
