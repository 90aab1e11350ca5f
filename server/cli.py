"""`promptswap serve | serve-cluster | upload | list | tenant … | key …`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

from prompt_store.store_lock import StoreLock, StoreLockedError
from prompt_store.tenants import QUOTA_FIELDS, SCOPES
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

    cluster = commands.add_parser("serve-cluster", help="run N engine replicas behind one endpoint on Ray Serve")
    add_serve_flags(cluster)
    cluster.add_argument("--replicas", type=int, default=2, help="engine replicas (default 2; >1 needs an s3:// store)")
    cluster.add_argument("--ray-address", dest="ray_address", help="join this Ray cluster (default: start a local one)")
    cluster.add_argument("--num-cpus", dest="num_cpus", type=int, help="CPUs of the local Ray (default: all)")
    cluster.add_argument("--replica-gpus", dest="replica_gpus", type=float, default=0.0, help="GPUs per replica")
    cluster.set_defaults(run=_serve_cluster)

    upload = commands.add_parser("upload", help="upload a PEFT adapter folder as TASK to a running server")
    upload.add_argument("task")
    upload.add_argument("adapter_dir", type=Path, help="folder with adapter_config.json and adapter_model.safetensors")
    _add_client_flags(upload)
    upload.set_defaults(run=_upload)

    listing = commands.add_parser("list", help="list the tasks of a running server")
    _add_client_flags(listing)
    listing.set_defaults(run=_list)

    tenant = commands.add_parser("tenant", help="manage tenants (operator)").add_subparsers(
        dest="action", required=True
    )
    create = tenant.add_parser("create", help="create a tenant")
    create.add_argument("name")
    create.add_argument("--weight", type=float, help="share of the engine under contention (default 1)")
    for name in QUOTA_FIELDS:
        create.add_argument(f"--{name.replace('_', '-')}", dest=name, type=int, help="quota (default: none)")
    create.set_defaults(run=_tenant_create)
    tenant_list = tenant.add_parser("list", help="list tenants")
    tenant_list.set_defaults(run=_tenant_list)
    delete = tenant.add_parser("delete", help="delete a tenant and its keys (it must own no tasks)")
    delete.add_argument("name")
    delete.set_defaults(run=_tenant_delete)
    for parser_ in (create, tenant_list, delete):
        _add_client_flags(parser_, with_api_key=False)

    key = commands.add_parser("key", help="manage a tenant's API keys (operator)").add_subparsers(
        dest="action", required=True
    )
    key_create = key.add_parser("create", help="create an API key; it is printed once")
    key_create.add_argument("tenant")
    key_create.add_argument("--scope", dest="scopes", action="append", choices=SCOPES, help="repeat; default: generate")
    key_create.add_argument("--expires-in", dest="expires_in", type=float, help="seconds until it expires")
    key_create.set_defaults(run=_key_create)
    key_list = key.add_parser("list", help="list a tenant's keys (never the secrets)")
    key_list.add_argument("tenant")
    key_list.set_defaults(run=_key_list)
    revoke = key.add_parser("revoke", help="revoke a key: refused from the next request on")
    revoke.add_argument("tenant")
    revoke.add_argument("key_id")
    revoke.set_defaults(run=_key_revoke)
    for parser_ in (key_create, key_list, revoke):
        _add_client_flags(parser_, with_api_key=False)
    return parser


def _add_client_flags(parser: argparse.ArgumentParser, with_api_key: bool = True) -> None:
    parser.add_argument("--url", help="server URL (default: from PROMPTSWAP_HOST / PROMPTSWAP_PORT)")
    parser.add_argument("--admin-token", dest="admin_token", help="admin token (default: PROMPTSWAP_ADMIN_TOKEN)")
    if with_api_key:
        parser.add_argument("--api-key", dest="api_key", help="a tenant API key with prompts:write, for its own tasks")


def _serve_config(args: argparse.Namespace) -> ServerConfig:
    names = ("model", "model_id", "host", "port", "store", "admin_token", "require_api_key", "audit_log")
    return load_config({name: getattr(args, name) for name in names})


def _serve(args: argparse.Namespace) -> int:
    config = _serve_config(args)
    # Held for the life of the process, so a second server on this store fails here, before it binds its port.
    if config.store.s3 is None:  # an object store has no lock: its writes are conditional (s3_storage.py)
        StoreLock(config.store.directory)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_server(config, EngineClient(config))


def _serve_cluster(args: argparse.Namespace) -> int:
    config = _serve_config(args)
    try:
        from server.cluster.cluster_app import ClusterOptions, run_cluster  # ray comes with the extra `cluster`
    except ImportError as exc:
        raise ConfigError(f"serve-cluster needs Ray Serve: pip install 'promptswap[cluster]' ({exc})") from None
    options = ClusterOptions(
        num_replicas=args.replicas,
        ray_address=args.ray_address,
        num_cpus=args.num_cpus,
        replica_num_gpus=args.replica_gpus,
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_cluster(config, options)


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


def _tenant_create(args: argparse.Namespace) -> int:
    body: dict[str, object] = {"name": args.name}
    if args.weight is not None:
        body["weight"] = args.weight
    body |= {name: getattr(args, name) for name in QUOTA_FIELDS if getattr(args, name) is not None}
    _, tenant = _client(args).request_json("POST", "/v1/admin/tenants", body)
    print(f"created tenant {tenant['name']}: {_describe_tenant(tenant)}")
    return 0


def _tenant_list(args: argparse.Namespace) -> int:
    _, result = _client(args).request("GET", "/v1/admin/tenants")
    print(f"{'TENANT':<32} {'TASKS':>5} {'BYTES':>12}  QUOTAS")
    for tenant in result["tenants"]:
        print(f"{tenant['name']:<32} {tenant['num_tasks']:>5} {tenant['prompt_bytes']:>12}  {_describe_tenant(tenant)}")
    return 0


def _tenant_delete(args: argparse.Namespace) -> int:
    _client(args).request("DELETE", f"/v1/admin/tenants/{_quote(args.name)}")
    print(f"deleted tenant {args.name}")
    return 0


def _key_create(args: argparse.Namespace) -> int:
    body = {"scopes": args.scopes or ["generate"], "expires_at": None}
    if args.expires_in is not None:
        body["expires_at"] = time.time() + args.expires_in
    _, key = _client(args).request_json("POST", f"/v1/admin/tenants/{_quote(args.tenant)}/keys", body)
    print(f"key {key['id']} for tenant {key['tenant']} ({','.join(key['scopes'])}); shown once, keep it now:")
    print(key["key"])
    return 0


def _key_list(args: argparse.Namespace) -> int:
    _, result = _client(args).request("GET", f"/v1/admin/tenants/{_quote(args.tenant)}/keys")
    print(f"{'KEY':<22} {'SCOPES':<28} {'CREATED':<20} EXPIRES")
    for key in result["keys"]:
        expires = _when(key["expires_at"]) if key["expires_at"] is not None else "never"
        print(f"{key['id']:<22} {','.join(key['scopes']):<28} {_when(key['created_at']):<20} {expires}")
    return 0


def _key_revoke(args: argparse.Namespace) -> int:
    _client(args).request("DELETE", f"/v1/admin/tenants/{_quote(args.tenant)}/keys/{_quote(args.key_id)}")
    print(f"revoked key {args.key_id} of tenant {args.tenant}")
    return 0


def _describe_tenant(tenant: dict) -> str:
    quotas = [f"{name.replace('_', '-')}={tenant[name]}" for name in QUOTA_FIELDS if tenant[name]]
    return " ".join([f"weight={tenant['weight']:g}", *quotas])


def _when(unix_time: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(unix_time))


def _quote(part: str) -> str:
    return urllib.parse.quote(part, safe="")


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
    def __init__(self, url: str, token: str | None):
        self.url = url.rstrip("/")
        self.token = token  # the admin token, or a tenant API key

    def request_json(self, method: str, path: str, body: dict):
        return self.request(method, path, json.dumps(body).encode(), "application/json")

    def request(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None):
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
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
    token = getattr(args, "api_key", None) or config.admin_token
    return AdminClient(args.url or f"http://{host}:{config.port}", token)
