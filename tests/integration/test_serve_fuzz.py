"""Property-based fuzzing of the live Ray Serve app (tiny-bert, local Ray) over HTTP.

Well over 1000 malformed or hostile requests — wrong types, missing and unknown fields, empty
texts, non-JSON and invalid UTF-8 bodies, wrong content types, oversized bodies and inputs,
deeply nested junk, random routes and methods — must each get a 4xx with the JSON error shape,
never a 5xx or a stack trace; afterwards the server still answers ``/health`` and real requests.
"""
from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.integration

LIMITS = {"max_items": 16, "max_chars": 1000, "max_body_bytes": 64 * 1024, "max_top_k": 20, "max_rerank_texts": 8}
SENT = {"requests": 0}
FUZZ = settings(max_examples=120, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

ROUTES = {  # route -> a valid body, to mutate
    "/v1/embeddings": {"input": ["hello world", "fuzz"], "model": "tiny", "encoding_format": "float"},
    "/search": {"query": "compression tool", "top_k": 3},
    "/rerank": {"query": "compression", "texts": ["zstd", "gzip"]},
}
REQUIRED = {"/v1/embeddings": ["input"], "/search": ["query"], "/rerank": ["query", "texts"]}
route_st = st.sampled_from(sorted(ROUTES))

json_leaf = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
             | st.text(max_size=20))
json_value = st.recursive(
    json_leaf, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=12)
not_a_string = json_value.filter(lambda v: not isinstance(v, str))
not_text_list = json_value.filter(lambda v: not isinstance(v, str)
                                  and not (isinstance(v, list) and v and all(isinstance(x, str) for x in v)))


@pytest.fixture(scope="module")
def client(serve_ray, serve_assets):
    from embedray.serve.config import ServeConfig

    cfg = ServeConfig(str(serve_assets.tiny), corpus=str(serve_assets.corpus), model_name="tiny",
                      cross_encoder=str(serve_assets.cross_encoder), cpus_per_replica=0.5, reranker_cpus=0.25,
                      **LIMITS)
    urls = serve_ray.deploy({"fuzz": (cfg, "/")})
    with httpx.Client(base_url=urls["fuzz"], timeout=60) as c:
        yield c


_NO_BODY = object()


def send(client, method: str, path: str, *, content: bytes | None = None, body=_NO_BODY,
         content_type: str | None = "application/json") -> httpx.Response:
    headers = {"content-type": content_type} if content_type is not None else {}
    if body is not _NO_BODY:
        content = json.dumps(body).encode()
    r = client.request(method, path, content=content, headers=headers)
    SENT["requests"] += 1
    assert r.status_code < 500, (method, path, content[:200] if content else None, r.status_code, r.text[:300])
    if r.status_code >= 400:
        err = r.json()["error"]
        assert set(err) == {"message", "type", "code"} and all(isinstance(v, str) for v in err.values()), r.text
        assert "Traceback" not in r.text and 'File "' not in r.text
    return r


def expect_4xx(r: httpx.Response, *statuses: int) -> None:
    assert r.status_code in statuses, (r.status_code, r.text[:300])


@FUZZ
@given(route=route_st, body=json_value.filter(lambda v: not isinstance(v, dict)))
def test_non_object_bodies(client, route, body):
    expect_4xx(send(client, "POST", route, body=body), 422)


@FUZZ
@given(route=route_st, junk=st.dictionaries(st.text(max_size=10), json_value, max_size=5))
def test_missing_required_fields(client, route, junk):
    body = {k: v for k, v in junk.items() if k not in REQUIRED[route]}
    expect_4xx(send(client, "POST", route, body=body), 422)


@FUZZ
@given(route=route_st, key=st.text(min_size=1, max_size=12), value=json_value)
def test_unknown_fields(client, route, key, value):
    assume(key not in {"input", "model", "encoding_format", "dimensions", "user", "truncate", "query", "top_k",
                       "rerank", "rerank_top_n", "texts", "top_n", "return_text"})
    body = dict(ROUTES[route], **{key: value})
    r = send(client, "POST", route, body=body)
    expect_4xx(r, 422)
    assert key[:1] in r.json()["error"]["message"] or "extra" in r.json()["error"]["message"].lower()


@FUZZ
@given(data=st.data())
def test_wrong_types(client, data):
    route = data.draw(route_st)
    body = dict(ROUTES[route])
    field = data.draw(st.sampled_from(sorted(body)))
    if field in ("input", "texts"):
        body[field] = data.draw(not_text_list)
    elif field == "top_k":
        body[field] = data.draw(json_value.filter(lambda v: v is not None and (
            not isinstance(v, int) or isinstance(v, bool) or v < 1 or v > LIMITS["max_top_k"])))
    elif field == "model":  # optional: null means "whatever is served"
        body[field] = data.draw(not_a_string.filter(lambda v: v is not None))
    else:
        body[field] = data.draw(not_a_string if field != "encoding_format"
                                else json_value.filter(lambda v: v not in ("float", "base64")))
    expect_4xx(send(client, "POST", route, body=body), 400, 404, 413, 422)


@FUZZ
@given(route=route_st, texts=st.lists(st.sampled_from(["", " ", "\n\t", "   \u3000"]), min_size=1, max_size=3),
       good=st.lists(st.text(min_size=1, max_size=10).filter(str.strip), max_size=3))
def test_empty_texts(client, route, texts, good):
    body = dict(ROUTES[route])
    if route == "/v1/embeddings":
        body["input"] = good + texts
    elif route == "/rerank":
        body["texts"] = good + texts
    else:
        body["query"] = texts[0]
    expect_4xx(send(client, "POST", route, body=body), 422)


@FUZZ
@given(route=route_st, raw=st.binary(max_size=300))
def test_non_json_bytes(client, route, raw):
    try:
        json.loads(raw)
        assume(False)
    except (ValueError, RecursionError):
        pass
    expect_4xx(send(client, "POST", route, content=raw), 400)


@FUZZ
@given(route=route_st, text=st.text(max_size=30),
       bad=st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80abc"]))
def test_invalid_utf8(client, route, text, bad):
    field = REQUIRED[route][0]
    raw = b'{"' + field.encode() + b'": "' + json.dumps(text)[1:-1].encode() + bad + b'"}'
    expect_4xx(send(client, "POST", route, content=raw), 400)


@FUZZ
@given(route=route_st,
       surrogate=st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3),
       where=st.sampled_from(["text", "key", "model"]))
def test_lone_surrogates(client, route, surrogate, where):
    body = dict(ROUTES[route])
    if where == "key":
        body[surrogate] = 1
    elif where == "model":
        body["model"] = surrogate
    else:
        field = REQUIRED[route][-1]
        body[field] = ["ok", "x" + surrogate] if field in ("input", "texts") else surrogate
    raw = json.dumps(body).encode()  # ensure_ascii: valid JSON that escapes the surrogates
    expect_4xx(send(client, "POST", route, content=raw), 404, 422)


@FUZZ
@given(route=route_st, ctype=st.sampled_from([None, "text/plain", "application/x-www-form-urlencoded",
                                              "multipart/form-data; boundary=x", "application/xml", "application/jsonx",
                                              "", "json", "text/json"]),
       body=json_value)
def test_wrong_content_type(client, route, ctype, body):
    expect_4xx(send(client, "POST", route, content=json.dumps(body).encode(), content_type=ctype), 415)


@FUZZ
@given(route=route_st, kind=st.sampled_from(["body", "items", "chars", "top_k"]), extra=st.integers(1, 5000))
def test_oversized(client, route, kind, extra):
    body = dict(ROUTES[route])
    if kind == "body":
        body["junk"] = "x" * (LIMITS["max_body_bytes"] + extra)
        expect_4xx(send(client, "POST", route, body=body), 413)
        return
    if kind == "items" and route != "/search":
        key, limit = ("input", "max_items") if route == "/v1/embeddings" else ("texts", "max_rerank_texts")
        body[key] = ["y"] * (LIMITS[limit] + 1 + extra % 100)
        expect_4xx(send(client, "POST", route, body=body), 413)
    elif kind == "chars" or route == "/search" and kind == "items":
        key = {"/v1/embeddings": "input", "/search": "query", "/rerank": "query"}[route]
        body[key] = "z" * (LIMITS["max_chars"] + extra % 20_000)
        expect_4xx(send(client, "POST", route, body=body), 413)
    elif route == "/search":
        body["top_k"] = LIMITS["max_top_k"] + extra
        expect_4xx(send(client, "POST", route, body=body), 422)
    else:
        body["top_n" if route == "/rerank" else "dimensions"] = -extra
        expect_4xx(send(client, "POST", route, body=body), 422)


@FUZZ
@given(route=route_st, depth=st.integers(50, 20_000), opener=st.sampled_from(["[", '{"a":']))
def test_deeply_nested_junk(client, route, depth, opener):
    closer = "]" if opener == "[" else "}"
    raw = (opener * depth + "1" + closer * depth).encode()
    if len(raw) > LIMITS["max_body_bytes"]:
        expect_4xx(send(client, "POST", route, content=raw), 413)
    else:
        expect_4xx(send(client, "POST", route, content=raw), 400, 422)


@FUZZ
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
       path=st.text(alphabet="abcxyz/_-.%0123456789", max_size=30))
def test_random_routes_and_methods(client, method, path):
    path = "/" + path.lstrip("/")
    known = {"/v1/embeddings": "POST", "/search": "POST", "/rerank": "POST", "/health": "GET", "/info": "GET",
             "/metrics": "GET", "/docs": "GET", "/openapi.json": "GET", "/docs/oauth2-redirect": "GET", "/redoc": "GET"}
    assume(known.get(path) != method)
    r = send(client, method, path, content=b"{}")
    expect_4xx(r, 404, 405, 422, 415)


@settings(max_examples=150, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(route=route_st, data=st.data())
def test_anything_goes_never_5xx(client, route, data):
    """Arbitrary values for the real fields: valid ones may pass (200), nothing may crash."""
    body = {k: data.draw(st.one_of(json_value, st.just(v))) for k, v in ROUTES[route].items()}
    send(client, "POST", route, body=body)


def test_server_still_healthy_after_fuzzing(client):
    print(f"\nfuzz: {SENT['requests']} hostile requests, every one a 4xx in the JSON error shape")
    assert SENT["requests"] >= 1000, SENT
    assert client.get("/health").json() == {"status": "ok"}
    r = client.post("/v1/embeddings", json={"input": ["still alive"]})
    assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == 32
    metrics = client.get("/metrics").text
    assert 'status="422"' in metrics and 'status="400"' in metrics and 'status="413"' in metrics
