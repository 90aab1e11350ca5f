"""Hostile uploads over HTTP against a real server: hostile task names (path traversal, "%2F", unicode), broken or
disguised safetensors (truncated, absurd header lengths, wrong names/shapes/dtypes, NaN/Inf, renamed pickles, a zip
bomb), configs with wrong types or unsupported types, and bodies over the limits. Each gets a 4xx whose message names
the problem; the store directory stays byte-for-byte the same, the catalogue too, and the server stays healthy.
A pickle that would leave a file behind if anything unpickled it never does. A handful of them again against a server
on a bucket (a real SeaweedFS): the bucket stays object-for-object the same."""

from __future__ import annotations

import http.client
import io
import json
import pickle
import re
import struct
import urllib.parse
import zipfile
from pathlib import Path

import httpx
import pytest
import safetensors.torch
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prompt_store.task_names import is_valid_task_name
from tests.e2e.served_store import ServedStore, served_store
from tests.e2e.server_process import start_server
from tests.e2e.store_client import adapter_bytes, list_tasks, put_prompt

MAX_BODY_BYTES = 1_000_000
MAX_FILE_BYTES = 300_000
MAX_VIRTUAL_TOKENS = 64
SERVER_ENV = {
    "PROMPTSWAP_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
    "PROMPTSWAP_MAX_FILE_BYTES": str(MAX_FILE_BYTES),
    "PROMPTSWAP_MAX_VIRTUAL_TOKENS": str(MAX_VIRTUAL_TOKENS),
}
CLIENT_TIMEOUT_S = 60
MODEL_PROBLEM = r"adapter_model\.safetensors|tensor 'prompt_embeddings'"
PICKLE_PROBLEM = r"pickled files are refused"
CHUNKED_PART_HEAD = b'--x\r\nContent-Disposition: form-data; name="adapter_model"; filename="m"\r\n\r\n'
HTTP_FUZZ = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


@pytest.fixture(scope="module")
def valid(tiny_llama_dir, adapter_factory) -> dict[str, tuple[bytes, bytes]]:
    """name -> (config bytes, model bytes) of real PEFT adapters the server accepts."""
    return {
        "prompt": adapter_bytes(adapter_factory(tiny_llama_dir, "PROMPT_TUNING")),
        "prefix": adapter_bytes(adapter_factory(tiny_llama_dir, "PREFIX_TUNING", prefix_projection=True)),
    }


@pytest.fixture(scope="module")
def baseline(server, client, valid, store):
    return _stored_baseline(server, client, valid, store)


def _stored_baseline(server, client, valid, store: ServedStore):
    """Two stored tasks, then what must never change: the store's digest and the catalogue."""
    for name, files in valid.items():
        assert put_prompt(client, server, f"kept-{name}", *files).status_code == 201
    return store, store.digest(), list_tasks(client, server)


@pytest.fixture(scope="module")
def tripwire(tmp_path_factory) -> Path:
    """A file that exists only if something unpickled one of our pickles."""
    return tmp_path_factory.mktemp("tripwire") / "unpickled"


def _assert_refused_and_nothing_changed(response, baseline, client, server, problem: str, status=(422,)) -> None:
    assert response.status_code in status, (response.status_code, response.text)
    body = response.json()
    assert body["error_type"] in ("validation", "too_large", "not_found"), body
    assert re.search(problem, body["error"]), (problem, body["error"])
    store, digest, catalogue = baseline
    assert store.digest() == digest, "a refused upload changed the store"
    assert list_tasks(client, server) == catalogue
    assert client.get("/health").status_code == 200


# ---- task names --------------------------------------------------------------------------------------------------
hostile_names = st.one_of(
    st.text(max_size=80),
    st.text(st.sampled_from("./\\%2Fe.-_~ aZ9é\u202e\x00\n"), max_size=20),
    st.lists(st.sampled_from(["..", ".", "etc", "passwd", "/", "%2F", "%2e%2e", "\\", "tasks", "x"]), max_size=6).map(
        "".join
    ),
    st.sampled_from(["..", ".", "../tasks/x", "..%2F..%2Fetc", "a/b", "a%2Fb", "x" * 65, "ünïcödé", "tâche", "Ⅸ"]),
)


def _put_raw_path(server, name: str, keep_slashes: bool, files: tuple[bytes, bytes]) -> httpx.Response:
    """PUT with the name percent-encoded into the request target as given: http.client, unlike httpx, does not
    collapse "/../" before sending, so the server sees the traversal attempt itself."""
    target = "/v1/admin/prompts/" + urllib.parse.quote(name, safe="/" if keep_slashes else "")
    request = httpx.Request("PUT", server.url, files={"adapter_config": files[0], "adapter_model": files[1]})
    body = request.read()
    connection = http.client.HTTPConnection(server.url.removeprefix("http://"), timeout=30)
    try:
        headers = {**server.admin_headers, "Content-Type": request.headers["content-type"]}
        connection.request("PUT", target, body=body, headers=headers)
        answer = connection.getresponse()
        return httpx.Response(answer.status, content=answer.read(), headers=dict(answer.getheaders()))
    finally:
        connection.close()


@HTTP_FUZZ
@given(name=hostile_names, keep_slashes=st.booleans())
def test_hostile_task_names_are_refused_by_the_naming_rule(server, client, valid, baseline, name, keep_slashes):
    if is_valid_task_name(name):
        return
    response = _put_raw_path(server, name, keep_slashes, valid["prompt"])
    _assert_refused_and_nothing_changed(response, baseline, client, server, r"task name .* is invalid")


def test_the_base_model_id_is_not_a_task_name(server, client, valid, baseline, tiny_llama_dir):
    response = put_prompt(client, server, tiny_llama_dir.name, *valid["prompt"])
    _assert_refused_and_nothing_changed(response, baseline, client, server, r"base model's id")


# ---- adapter_model.safetensors -----------------------------------------------------------------------------------
def _safetensors(tensors: dict[str, torch.Tensor]) -> bytes:
    return safetensors.torch.save({name: tensor.contiguous() for name, tensor in tensors.items()})


@st.composite
def hostile_model_files(draw, model_bytes: bytes) -> tuple[bytes, str]:
    """(file bytes, a regex the refusal must match) for one way a weights file can be broken or disguised."""
    prompt = safetensors.torch.load(model_bytes)["prompt_embeddings"]
    kind = draw(st.sampled_from(["truncated", "header length", "header", "tensor", "non-finite", "bytes", "pickle"]))
    if kind == "truncated":
        return model_bytes[: draw(st.integers(0, len(model_bytes) - 1))], MODEL_PROBLEM
    if kind == "header length":
        length = draw(st.integers(len(model_bytes) - 8 + 1, 2**64 - 1))
        return struct.pack("<Q", length) + model_bytes[8:], MODEL_PROBLEM
    if kind == "header":
        header = json.dumps(draw(st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8), max_size=3)))
        return struct.pack("<Q", len(header)) + header.encode() + model_bytes[-64:], MODEL_PROBLEM
    if kind == "tensor":
        name = draw(st.sampled_from(["prompt_embeddings", "base_model.prompt_embeddings", "prefix_task_cols", "w"]))
        dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.int32, torch.int8, torch.uint8, torch.bool]))
        rows, width = prompt.shape
        shape = draw(st.sampled_from([(rows, width), (rows + 1, width), (width, rows), (rows * width,), ()]))
        if (name, dtype, shape) == ("prompt_embeddings", torch.float32, (rows, width)):
            dtype = torch.int32  # the one combination that is valid
        wrong = _safetensors({name: torch.zeros(shape).to(dtype)})
        return wrong, rf"{MODEL_PROBLEM}|tensor '{re.escape(name)}'"
    if kind == "non-finite":
        poisoned = prompt.to(draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))).clone()
        bad_value = draw(st.sampled_from([float("nan"), float("inf"), -float("inf")]))
        poisoned.view(-1)[draw(st.integers(0, prompt.numel() - 1))] = bad_value
        return _safetensors({"prompt_embeddings": poisoned}), r"NaN or infinite"
    if kind == "bytes":
        return draw(st.binary(max_size=512)), rf"{MODEL_PROBLEM}|{PICKLE_PROBLEM}"
    return pickle.dumps({"prompt_embeddings": prompt}, protocol=draw(st.integers(0, 5))), PICKLE_PROBLEM


@HTTP_FUZZ
@given(data=st.data())
def test_hostile_weight_files_are_refused_naming_the_problem(server, client, valid, baseline, data):
    adapter = data.draw(st.sampled_from(sorted(valid)))
    config_bytes, model_bytes = valid[adapter]
    hostile, problem = data.draw(hostile_model_files(model_bytes))
    response = put_prompt(client, server, "fuzzed", config_bytes, hostile)
    _assert_refused_and_nothing_changed(response, baseline, client, server, problem)


class _Tripwire:
    """Unpickling it creates the tripwire file: proof that something unpickled user data."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def _zip_bomb() -> bytes:
    """A few hundred KB that inflate to 256 MB: a torch.save-style zip archive that nothing may open."""
    buffer = io.BytesIO()
    archive = zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9)
    with archive, archive.open("archive/data.pkl", "w") as member:
        for _ in range(256):
            member.write(bytes(1 << 20))
    return buffer.getvalue()


def test_renamed_pickles_and_a_zip_bomb_are_refused_and_never_opened(server, client, valid, baseline, tripwire):
    config_bytes, _ = valid["prompt"]
    saved = io.BytesIO()
    torch.save({"prompt_embeddings": _Tripwire(tripwire)}, saved)
    disguised = [pickle.dumps(_Tripwire(tripwire), protocol=p) for p in range(pickle.HIGHEST_PROTOCOL + 1)]
    for payload in [*disguised, saved.getvalue(), _zip_bomb()]:
        assert len(payload) < MAX_FILE_BYTES
        response = put_prompt(client, server, "pickled", config_bytes, payload)
        _assert_refused_and_nothing_changed(response, baseline, client, server, PICKLE_PROBLEM)
    assert not tripwire.exists(), "something unpickled an uploaded file"


# ---- adapter_config.json -----------------------------------------------------------------------------------------
JSON_VALUES = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10)
    | st.lists(st.integers(), max_size=2)
)
MISSING = object()
REQUIRED_FIELDS = ("peft_type", "task_type", "num_virtual_tokens")
CHECKED_FIELDS = (*REQUIRED_FIELDS, "token_dim", "num_layers", "num_attention_heads", "num_transformer_submodules")
HOSTILE_FIELD_VALUES = {
    "peft_type": st.sampled_from(["LORA", "IA3", "ADALORA", "LOHA", "prefix_tuning", "PROMPT_TUNING", ""]),
    "task_type": st.sampled_from(["SEQ_CLS", "SEQ_2_SEQ_LM", "TOKEN_CLS", "QUESTION_ANS", "causal_lm", ""]),
}


def _is_acceptable(field: str, value, config: dict) -> bool:
    """Whether `value` is a valid setting of `field` for the prefix adapter, so not a hostile one."""
    if value is MISSING:
        return field not in REQUIRED_FIELDS
    if field == "modules_to_save":
        return value is None or value == []
    if field in REQUIRED_FIELDS:
        return type(value) is type(config[field]) and value == config[field]
    return value is None or (type(value) is int and value == config[field])


@HTTP_FUZZ
@given(data=st.data())
def test_configs_with_wrong_types_or_values_are_refused_naming_the_field(server, client, valid, baseline, data):
    config_bytes, model_bytes = valid["prefix"]
    config = json.loads(config_bytes)
    field = data.draw(st.sampled_from([*CHECKED_FIELDS, "modules_to_save"]))
    value = data.draw(HOSTILE_FIELD_VALUES.get(field, st.nothing()) | JSON_VALUES | st.just(MISSING))
    if _is_acceptable(field, value, config):
        return
    changed = {k: v for k, v in config.items() if k != field} if value is MISSING else config | {field: value}
    response = put_prompt(client, server, "fuzzed", json.dumps(changed).encode(), model_bytes)
    # Another served peft_type, or another num_virtual_tokens, shows as tensors that do not fit it, or (prefix
    # config read as prompt tuning) as a token_dim that is not the served model's hidden size; a served
    # classification task_type (SEQ_CLS, TOKEN_CLS) as the head the generation adapter's file lacks.
    problem = (
        rf"{field}|tensor 'prompt_embeddings' has shape|adapter_model\.safetensors has no tensor|token_dim is"
        r"|adapter_model\.safetensors has no classifier head"
    )
    _assert_refused_and_nothing_changed(response, baseline, client, server, problem, status=(413, 422))


@pytest.mark.parametrize(
    "config_bytes",
    [
        b"",
        b"\xff\xfe",
        b"[1, 2]",
        b'"CAUSAL_LM"',
        b'{"task_type": "CAUSAL_LM", "num_virtual_tokens": NaN}',
        b"{" * 5000,
    ],
    ids=["empty", "not utf-8", "array", "string", "NaN", "deep nesting"],
)
def test_configs_that_are_not_json_objects_are_refused(server, client, valid, baseline, config_bytes):
    response = put_prompt(client, server, "fuzzed", config_bytes, valid["prompt"][1])
    _assert_refused_and_nothing_changed(response, baseline, client, server, r"adapter_config\.json")


# ---- sizes and body shape ----------------------------------------------------------------------------------------
def test_bodies_and_files_over_the_limits_are_413(server, client, valid, baseline):
    config_bytes, model_bytes = valid["prompt"]
    config = json.loads(config_bytes)
    rows = MAX_FILE_BYTES // (4 * config["token_dim"]) + 1
    too_many_rows = _safetensors({"prompt_embeddings": torch.zeros(rows, config["token_dim"])})
    cases = [
        (put_prompt(client, server, "big", config_bytes, bytes(MAX_BODY_BYTES + 1)), r"request body exceeds"),
        (
            client.put(  # chunked: no Content-Length to refuse up front
                "/v1/admin/prompts/big",
                headers={**server.admin_headers, "Content-Type": "multipart/form-data; boundary=x"},
                content=iter([CHUNKED_PART_HEAD] + [bytes(1 << 16)] * (MAX_BODY_BYTES // (1 << 16) + 2)),
            ),
            r"request body exceeds",
        ),
        (put_prompt(client, server, "big", config_bytes, too_many_rows), rf"is {len(too_many_rows)} bytes; the limit"),
        (
            put_prompt(client, server, "big", json.dumps(config | {"x": "y" * 70_000}).encode(), model_bytes),
            r"adapter_config\.json is \d+ bytes; the limit",
        ),
        (
            put_prompt(
                client,
                server,
                "big",
                json.dumps(config | {"num_virtual_tokens": MAX_VIRTUAL_TOKENS + 1}).encode(),
                model_bytes,
            ),
            rf"num_virtual_tokens is {MAX_VIRTUAL_TOKENS + 1}; the limit is {MAX_VIRTUAL_TOKENS}",
        ),
    ]
    for response, problem in cases:
        assert response.json()["error_type"] == "too_large", response.text
        _assert_refused_and_nothing_changed(response, baseline, client, server, problem, status=(413,))


def test_malformed_multipart_bodies_are_refused(server, client, valid, baseline):
    config_bytes, model_bytes = valid["prompt"]
    headers = server.admin_headers
    multipart = {**headers, "Content-Type": "multipart/form-data; boundary=x"}
    cases = [
        client.put("/v1/admin/prompts/x", headers=headers, files={"adapter_config": config_bytes}),
        client.put("/v1/admin/prompts/x", headers=headers, files={"adapter_model": model_bytes}),
        client.put("/v1/admin/prompts/x", headers=headers, json={"adapter_config": "{}"}),
        client.put("/v1/admin/prompts/x", headers=multipart, content=b"--x\r\ngarbage"),
        client.put("/v1/admin/prompts/x", headers=multipart, content=b"--y\r\n\r\n--y--\r\n"),
    ]
    for response in cases:
        problem = r"adapter_config|adapter_model|multipart|form|body|boundary"
        _assert_refused_and_nothing_changed(response, baseline, client, server, problem)


# ---- the same refusals on a bucket -------------------------------------------------------------------------------
BUCKET_CASES = ("traversal name", "encoded slash name", "truncated", "NaN", "pickle", "config array", "LORA", "too big")


def _hostile_upload(case: str, server, client, valid) -> tuple[httpx.Response, str, int]:
    """(the response to one hostile upload, a regex its error must match, its status)."""
    config_bytes, model_bytes = valid["prompt"]
    config = json.loads(config_bytes)
    prompt = safetensors.torch.load(model_bytes)["prompt_embeddings"]
    if case in ("traversal name", "encoded slash name"):
        name, keep_slashes = ("../tasks/x", True) if case == "traversal name" else ("..%2F..%2Fetc", False)
        return _put_raw_path(server, name, keep_slashes, valid["prompt"]), r"task name .* is invalid", 422
    if case == "truncated":
        return put_prompt(client, server, "fuzzed", config_bytes, model_bytes[:-7]), MODEL_PROBLEM, 422
    if case == "NaN":
        poisoned = prompt.clone()
        poisoned.view(-1)[0] = float("nan")
        nan_file = _safetensors({"prompt_embeddings": poisoned})
        return put_prompt(client, server, "fuzzed", config_bytes, nan_file), r"NaN or infinite", 422
    if case == "pickle":
        return put_prompt(client, server, "fuzzed", config_bytes, pickle.dumps(prompt)), PICKLE_PROBLEM, 422
    if case == "config array":
        return put_prompt(client, server, "fuzzed", b"[1, 2]", model_bytes), r"adapter_config\.json", 422
    if case == "LORA":
        lora = json.dumps(config | {"peft_type": "LORA"}).encode()
        return put_prompt(client, server, "fuzzed", lora, model_bytes), r"peft_type", 422
    rows = MAX_FILE_BYTES // (4 * config["token_dim"]) + 1
    too_many_rows = _safetensors({"prompt_embeddings": torch.zeros(rows, config["token_dim"])})
    return put_prompt(client, server, "big", config_bytes, too_many_rows), r"bytes; the limit", 413


@pytest.fixture(scope="module")
def on_a_bucket(request, tiny_llama_dir, tmp_path_factory, valid):
    """(server, client, baseline) like the module's, the server's store in a bucket."""
    store = served_store(request, "s3", tmp_path_factory.mktemp("fuzz-s3"))
    server = start_server(tiny_llama_dir, store.work_dir, env=SERVER_ENV | store.env)
    try:
        with httpx.Client(base_url=server.url, timeout=CLIENT_TIMEOUT_S) as client:
            yield server, client, _stored_baseline(server, client, valid, store)
    finally:
        assert server.stop() == 0, server.log()


@pytest.mark.parametrize("case", BUCKET_CASES)
def test_refused_uploads_leave_a_bucket_unchanged(on_a_bucket, valid, case):
    server, client, baseline = on_a_bucket
    response, problem, status = _hostile_upload(case, server, client, valid)
    _assert_refused_and_nothing_changed(response, baseline, client, server, problem, status=(status,))
