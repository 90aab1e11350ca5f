"""`POST /v1/classify` against a real server: uploaded SEQ_CLS and TOKEN_CLS adapters (labels sent as a multipart
part) give the softmax of PEFT's classification logits, a task's kind is in its listing, the wrong kind of task for
a route is a 400 naming the kind, and a classification task swapped under load serves one whole version per
request."""

from __future__ import annotations

import json
import math
import threading

import pytest

from tests.e2e.server_process import upload_adapter
from tests.support.classifiers import TEXTS, classifier_logits, load_classifier, train_classifier

ADAPTERS = {"gen": ("PROMPT_TUNING", {})}
SENTIMENT_LABELS = ["negative", "positive"]


@pytest.fixture(scope="module")
def classifiers(tiny_llama_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e-classifiers")
    return {
        "sentiment": train_classifier(tiny_llama_dir, "SEQ_CLS", "PREFIX_TUNING", root / "s1", num_labels=2),
        "sentiment-v2": train_classifier(tiny_llama_dir, "SEQ_CLS", "PREFIX_TUNING", root / "s2", num_labels=2, seed=7),
        "ner": train_classifier(
            tiny_llama_dir, "TOKEN_CLS", "P_TUNING", root / "ner", num_labels=3, encoder_hidden_size=32
        ),
    }


@pytest.fixture(scope="module")
def references(tiny_llama_dir, classifiers, tokenizer):
    """name -> the softmax of PEFT's logits for each of TEXTS."""
    kinds = {"sentiment": ("SEQ_CLS", 2), "sentiment-v2": ("SEQ_CLS", 2), "ner": ("TOKEN_CLS", 3)}
    out = {}
    for name, (task_type, num_labels) in kinds.items():
        model = load_classifier(tiny_llama_dir, classifiers[name], task_type, num_labels)
        out[name] = [classifier_logits(model, tokenizer(text).input_ids).softmax(-1).tolist() for text in TEXTS]
    return out


def upload(client, server, task, folder, labels=None):
    files = {
        "adapter_config": ("adapter_config.json", (folder / "adapter_config.json").read_bytes()),
        "adapter_model": ("adapter_model.safetensors", (folder / "adapter_model.safetensors").read_bytes()),
    }
    if labels is not None:
        files["labels"] = ("labels.json", json.dumps(labels).encode())
    response = client.put(f"/v1/admin/prompts/{task}", headers=server.admin_headers, files=files)
    assert response.status_code in (200, 201), response.text
    return response.json()


@pytest.fixture(scope="module")
def tasks(server, client, classifiers, adapters):
    upload(client, server, "sentiment", classifiers["sentiment"], SENTIMENT_LABELS)
    upload(client, server, "ner", classifiers["ner"])
    assert upload_adapter(client, server, "gen", adapters["gen"]).status_code == 201


def close(actual: list[float], expected: list[float]) -> bool:
    return all(math.isclose(a, e, rel_tol=1e-4, abs_tol=1e-6) for a, e in zip(actual, expected, strict=True))


def test_sequence_and_token_tasks_give_pefts_probabilities_and_labels(client, tasks, references, tokenizer):
    response = client.post("/v1/classify", json={"model": "sentiment", "input": TEXTS})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list" and body["model"] == "sentiment"
    assert body["usage"]["prompt_tokens"] == sum(len(tokenizer(text).input_ids) for text in TEXTS)
    for i, item in enumerate(body["data"]):
        expected = references["sentiment"][i]
        assert item["index"] == i and item["num_classes"] == 2 and close(item["probs"], expected), (item, expected)
        assert item["label"] == SENTIMENT_LABELS[max(range(2), key=expected.__getitem__)]
    single = client.post("/v1/classify", json={"model": "sentiment", "input": TEXTS[1]}).json()["data"]
    assert len(single) == 1 and close(single[0]["probs"], references["sentiment"][1])

    tagged = client.post("/v1/classify", json={"model": "ner", "input": TEXTS[2]}).json()["data"][0]
    encoded = tokenizer(TEXTS[2], return_offsets_mapping=True)
    assert tagged["label"] is None and tagged["num_classes"] == 3
    assert [(t["start"], t["end"]) for t in tagged["tokens"]] == [tuple(o) for o in encoded.offset_mapping]
    for token, expected in zip(tagged["tokens"], references["ner"][2], strict=True):
        assert close(token["probs"], expected)
        assert token["label"] == f"LABEL_{max(range(3), key=expected.__getitem__)}"
    assert "".join(t["token"] for t in tagged["tokens"]) == TEXTS[2]


def test_the_kind_is_listed_and_the_wrong_kind_is_a_400_naming_it(server, client, tasks):
    listing = client.get("/v1/admin/prompts/sentiment", headers=server.admin_headers).json()
    assert listing["task_kind"] == "classify-sequence" and listing["versions"][-1]["labels"] == SENTIMENT_LABELS, (
        listing
    )
    on_generation = client.post("/v1/classify", json={"model": "gen", "input": "hello"})
    assert on_generation.status_code == 400 and on_generation.json()["error"]["param"] == "model"
    assert "generate" in on_generation.json()["error"]["message"]
    completion = client.post("/v1/completions", json={"model": "ner", "prompt": "hello", "max_tokens": 2})
    assert completion.status_code == 400 and "classify-tokens" in completion.json()["error"]["message"]
    tgi = client.post("/v1/generate", params={"task": "sentiment"}, json={"inputs": "hello"})
    assert tgi.status_code == 422 and "classify-sequence" in tgi.text  # TGI reports validation errors as 422
    on_base = client.post(
        "/v1/classify", json={"model": client.get("/v1/models").json()["data"][0]["id"], "input": "x"}
    )
    assert on_base.status_code == 400, on_base.text
    assert client.post("/v1/classify", json={"model": "nope", "input": "x"}).status_code == 404
    for bad in ([], ["x"] * 65):
        response = client.post("/v1/classify", json={"model": "sentiment", "input": bad})
        assert response.status_code == 400 and response.json()["error"]["param"] == "input", response.text


def test_a_classification_task_swapped_under_load_serves_one_version_per_request(
    server, client, classifiers, references, tasks
):
    upload(client, server, "swap", classifiers["sentiment"], SENTIMENT_LABELS)
    results, errors, stop = [], [], threading.Event()

    def load() -> None:
        while not stop.is_set():
            response = client.post("/v1/classify", json={"model": "swap", "input": TEXTS})
            if response.status_code != 200:
                errors.append(response.text)
                continue
            results.append([item["probs"] for item in response.json()["data"]])

    workers = [threading.Thread(target=load) for _ in range(3)]
    for worker in workers:
        worker.start()
    while len(results) < 3:
        threading.Event().wait(0.05)
    upload(client, server, "swap", classifiers["sentiment-v2"], SENTIMENT_LABELS)
    after = client.post("/v1/classify", json={"model": "swap", "input": TEXTS}).json()["data"]
    while len(results) < 10:
        threading.Event().wait(0.05)
    stop.set()
    for worker in workers:
        worker.join()
    assert not errors, errors[:3]
    assert all(close(item["probs"], references["sentiment-v2"][i]) for i, item in enumerate(after))
    pinned = client.post("/v1/classify", json={"model": "swap@1", "input": TEXTS}).json()["data"]
    assert all(close(item["probs"], references["sentiment"][i]) for i, item in enumerate(pinned))  # NAME@N

    def version_of(probs: list[float], i: int) -> str | None:
        return next((v for v in ("sentiment", "sentiment-v2") if close(probs, references[v][i])), None)

    versions = [{version_of(probs, i) for i, probs in enumerate(result)} for result in results]
    # each input is served whole by one version; an upload between one request's inputs may split them, never a mix
    assert all(None not in seen for seen in versions), versions
    assert {"sentiment"} in versions and {"sentiment-v2"} in versions
