"""A server one can expose: API keys, one key's sessions hidden from another, max_tokens capped,
generations that stop with their client, error bodies without server paths.

The first half runs in-process on the fake model of test_server_unit; the second half runs a
real uvicorn process with SmolLM2, as test_server_http does.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from test_server_http import Server  # noqa: E402
from test_server_unit import EOG, REPLY, FakeModel, FakeSession, make_client  # noqa: E402

from pyllamaam.errors import ConfigError, ModelError, StateError  # noqa: E402
from server.auth import Keys, owner_of_key  # noqa: E402
from server.engine import Params, SessionManager, Worker  # noqa: E402
from server.errors import INTERNAL, Redactor, Unauthorized, http_error  # noqa: E402
from server.metrics import Metrics  # noqa: E402
from server.settings import Settings, parse_args  # noqa: E402

A, B = {"Authorization": "Bearer key-a"}, {"X-API-Key": "key-b"}  # both ways of sending a key


def owner_dir(root: Path, key: str) -> Path:
    return root / owner_of_key(key)


# --- in-process, fake model ---
def test_settings_keys_and_gpu_layers(monkeypatch, tmp_path):
    monkeypatch.setenv("PYLLAMAAM_API_KEY", " k1, k2 ")
    monkeypatch.setenv("PYLLAMAAM_N_GPU_LAYERS", "7")
    s = Settings()
    assert (s.api_key, s.n_gpu_layers) == (["k1", "k2"], 7)
    assert "k1" not in repr(s)  # keys stay out of logs
    s = parse_args(["--api-key", "x", "--api-key", "y,z", "-ngl", "99", "-fa"])
    assert (s.api_key, s.n_gpu_layers, s.flash_attn) == (["x", "y", "z"], 99, True)
    assert Settings(n_ctx=64).token_cap() == 64 and Settings(n_ctx=64, max_tokens_cap=8).token_cap() == 8


def test_key_file(tmp_path):
    from server.app import api_keys

    f = tmp_path / "keys.txt"
    f.write_text("# team keys\nfile-key\n\n  other  \n")
    assert api_keys(Settings(api_key=["flag-key"], api_key_file=f)) == ["flag-key", "file-key", "other"]
    with pytest.raises(ConfigError, match="holds no key"):
        f.write_text("# none\n")
        api_keys(Settings(api_key_file=f))
    with pytest.raises(ConfigError, match="cannot read"):
        api_keys(Settings(api_key_file=tmp_path / "missing"))
    from server.__main__ import main

    assert main(["--api-key-file", str(tmp_path / "missing")]) == 2  # a message, not a traceback


def test_keys_compare():
    keys = Keys(["key-a", "key-b"])
    assert keys.owner("key-a") == owner_of_key("key-a") != keys.owner("key-b")
    for bad in (None, "", "key-", "key-a ", "kéy"):
        with pytest.raises(Unauthorized):
            keys.owner(bad)
    assert Keys([]).owner(None) == ""  # no keys: everything open, one namespace


def test_401_without_a_valid_key(tmp_path):
    c, _ = make_client(tmp_path, api_key=["key-a", "key-b"])
    with c:
        assert c.get("/health").status_code == 200
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "key-a"}, {"X-API-Key": "x"}):
            for method, url in [("get", "/v1/models"), ("get", "/metrics"), ("get", "/props"),
                                ("post", "/v1/completions"), ("get", "/v1/sessions/x"), ("get", "/openapi.json")]:
                r = c.request(method, url, headers=headers, json={"prompt": "a"})
                assert r.status_code == 401, (headers, url)
                assert r.headers["www-authenticate"] == "Bearer"
                assert r.json()["error"]["type"] == "authentication_error"
        assert c.get("/v1/models", headers=A).status_code == 200
        assert c.get("/v1/models", headers={"Authorization": "bearer key-b"}).status_code == 200
        assert c.post("/v1/completions", headers=B, json={"prompt": "a", "max_tokens": 2}).status_code == 200
        assert 'pyllamaam_requests_total{endpoint="other",status="401"}' in c.get("/metrics", headers=A).text


def test_sessions_and_saves_are_per_key(tmp_path):
    c, _ = make_client(tmp_path, api_key=["key-a", "key-b"])
    with c:
        r = c.post("/v1/completions", headers=A, json={"prompt": "secret", "session_id": "doc", "temperature": 0})
        assert r.status_code == 200
        assert c.post("/v1/sessions/doc/save", headers=A, json={"name": "doc.save"}).status_code == 200
        assert (owner_dir(tmp_path / "state", "key-a") / "doc.save").is_file()
        assert not (tmp_path / "state" / "doc.save").exists()
        for method, url, body in [
            ("get", "/v1/sessions/doc", None),
            ("delete", "/v1/sessions/doc", None),
            ("post", "/v1/sessions/doc/compact", {"ratio": 2}),
            ("post", "/v1/sessions/doc/save", {"name": "mine.save"}),
            ("post", "/v1/sessions/mine/restore", {"name": "doc.save"}),
        ]:
            r = c.request(method, url, headers=B, json=body)
            assert r.status_code == 404, (url, r.text)
        assert c.get("/v1/sessions", headers=B).json()["data"] == []
        assert c.get("/props", headers=B).json()["sessions"]["ids"] == []
        # the same id under key B is another session; A's is untouched
        c.post("/v1/completions", headers=B, json={"prompt": "other text", "session_id": "doc", "max_tokens": 1})
        assert c.get("/v1/sessions/doc", headers=B).json()["n_tokens"] == len("other text") + 1
        assert c.get("/v1/sessions/doc", headers=A).json()["n_tokens"] == len("secret") + len(REPLY)
        assert c.get("/props", headers=A).json()["sessions"]["ids"] == ["doc"]
        r = c.post("/v1/sessions/copy/restore", headers=A, json={"name": "doc.save"})
        assert r.status_code == 200 and r.json()["n_tokens"] == len("secret") + len(REPLY)


def test_eviction_keeps_owners_apart(tmp_path):
    c, model = make_client(tmp_path, api_key=["key-a", "key-b"], max_sessions=1)
    with c:
        for headers, prompt in ((A, "aaaa"), (B, "bbbb")):  # B's session pushes A's to disk
            c.post("/v1/completions", headers=headers, json={"prompt": prompt, "session_id": "s", "temperature": 0})
        assert (owner_dir(tmp_path / "swap", "key-a") / "s.session").is_file()
        assert not (tmp_path / "swap" / "s.session").exists()
        r = c.post("/v1/completions", headers=A, json={"prompt": "aaaa" + REPLY + "!", "session_id": "s"})
        assert r.json()["usage"]["prompt_tokens_details"]["cached_tokens"] == 4 + len(REPLY)
        assert (owner_dir(tmp_path / "swap", "key-b") / "s.session").is_file()


def test_anonymous_cache_is_not_shared_across_keys(tmp_path):
    # a reused prefix shows in cached_tokens: another key's prompt must never be reused
    c, _ = make_client(tmp_path, api_key=["key-a", "key-b"])
    with c:
        body = {"prompt": "the password is swordfish", "max_tokens": 1}
        again = {**body, "prompt": body["prompt"] + REPLY[0] + "?"}

        def cached(headers: dict, b: dict) -> int:
            return c.post("/v1/completions", headers=headers, json=b).json()["usage"]["prompt_tokens_details"][
                "cached_tokens"]

        assert cached(A, body) == 0
        assert cached(B, body) == 0  # A's cache holds it, and B may not know
        assert cached(A, again) == cached(B, again) == len(body["prompt"]) + 1  # each its own slot


def test_metrics_name_only_the_callers_sessions():
    mgr = SessionManager(FakeModel(), Settings(n_ctx=64), Metrics(), Worker())
    for owner in ("oa", "ob"):
        mgr._slot_for(f"doc-{owner}", None, create=True, owner=owner).progress = {
            "trigger": "manual", "stage": "fit", "done": 1, "total": 2, "started": time.monotonic()}
    mgr.publish_progress("oa")
    text = mgr.metrics.render()
    assert "pyllamaam_compactions_running 2" in text and 'session="doc-oa"' in text and "doc-ob" not in text
    asyncio.run(mgr.close())
    mgr.worker.close()


class EndlessSession(FakeSession):
    """Never emits end-of-generation: only a limit ends it."""

    def logits(self):
        x = super().logits()
        x[EOG] = 0.0
        x[ord("a")] = 40.0
        return x


def test_max_tokens_is_capped_at_n_ctx_by_default(tmp_path):
    # a request with max_tokens 100000000 generated for minutes: auto-compaction never lets the context fill
    c, _ = make_client(tmp_path, model=FakeModel(EndlessSession), n_ctx=64, compact_threshold=0.5)
    with c:
        r = c.post("/v1/completions", json={"prompt": "go", "max_tokens": 100_000_000}).json()
        assert r["choices"][0]["finish_reason"] == "length" and r["usage"]["completion_tokens"] == 64
        assert r["usage"].get("compaction")  # it did pass n_ctx: only the cap ended it
    c, _ = make_client(tmp_path, model=FakeModel(EndlessSession), n_ctx=64, max_tokens_cap=5)
    with c:
        r = c.post("/v1/completions", json={"prompt": "go", "max_tokens": 10}).json()
        assert r["choices"][0]["finish_reason"] == "length" and r["usage"]["completion_tokens"] == 5


def test_closing_the_generator_releases_the_session():
    async def run() -> None:
        mgr = SessionManager(FakeModel(EndlessSession), Settings(n_ctx=64), Metrics(), Worker())
        gen = mgr.generate("s", [97], Params(max_tokens=50, temperature=0))
        assert await gen.__anext__() == ""
        await gen.__anext__()
        await gen.__anext__()
        await gen.aclose()  # what the streaming response does when its client goes away
        slot = mgr._named["", "s"]
        assert slot.users == 0 and not slot.lock.locked() and mgr._pending == 0
        assert mgr.metrics.get("pyllamaam_requests_cancelled_total") == 1
        assert len(slot.session.tokens) == 3  # the prompt and the two tokens sent stay cached
        items = [x async for x in mgr.generate("s", [97, 97, 97, 98], Params(max_tokens=2, temperature=0))]
        assert items[-1].finish_reason == "length" and items[-1].cached_tokens == 3
        await mgr.close()
        mgr.worker.close()

    asyncio.run(run())


class PathErrorModel(FakeModel):
    """Raises what pyllamaam raises: messages that embed the file."""

    def load_session(self, path, **kw):
        raise StateError(f"{path} is corrupt or truncated (checksum mismatch)")


def test_error_bodies_name_saves_not_paths(tmp_path):
    c, model = make_client(tmp_path, model=PathErrorModel(), api_key=["key-a"])
    root = str(tmp_path)
    with c:
        folder = owner_dir(tmp_path / "state", "key-a")
        folder.mkdir()
        (folder / "bad.save").write_text("{}")
        answers = []
        r = c.post("/v1/sessions/x/restore", headers=A, json={"name": "bad.save"})
        assert r.status_code == 409 and "'bad.save'" in r.json()["error"]["message"], r.text
        answers.append(r)
        r = c.post("/v1/sessions/x/restore", headers=A, json={"name": "missing.save"})
        assert r.status_code == 404 and "'missing.save'" in r.text
        answers.append(r)
        c.post("/v1/completions", headers=A, json={"prompt": "a", "session_id": "x", "max_tokens": 1})
        (folder / "dir.save").mkdir()  # the save lands on a folder: an OSError with the path in it
        r = c.post("/v1/sessions/x/save", headers=A, json={"name": "dir.save"})
        assert r.status_code == 500 and "'dir.save'" in r.text, r.text
        answers.append(r)
        answers.append(c.post("/v1/sessions/x/save", headers=A, json={"name": "../x"}))
        for r in answers:
            assert root not in r.text and "/state" not in r.text and folder.name not in r.text, r.text
    c, _ = make_client(tmp_path, state_dir=None)
    with c:
        r = c.post("/v1/sessions/x/restore", json={"name": "a"})
        assert r.status_code == 400 and root not in r.text


def test_unexpected_errors_and_library_messages_lose_their_paths(tmp_path):
    redact = Redactor(tmp_path / "state")
    status, body = http_error(RuntimeError(f"bug near {tmp_path}"), redact)
    assert status == 500 and body["error"]["message"] == INTERNAL  # a bug's text stays in the log
    status, body = http_error(ModelError(f"cannot read {tmp_path / 'state' / 'x.gguf'}"), redact)
    assert status == 400 and body["error"]["message"] == "cannot read <server>/x.gguf"


# --- a real uvicorn process with SmolLM2 ---
COUNTING = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,"  # greedy SmolLM2 goes on counting
# one decode thread: on a shared 2-core machine two spinning ggml threads made a token take 2 s, not 0.03
ONE_THREAD = ("--n-threads", "1")


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    state = tmp_path_factory.mktemp("auth-state")
    srv = Server(state, "--api-key", "key-a,key-b", "--n-ctx", "256", *ONE_THREAD)
    srv.state_dir = state
    yield srv
    srv.stop()


def client(srv: Server, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url + "/v1", api_key=key, max_retries=0, timeout=300)


@pytest.mark.native
def test_real_server_keys(keyed):
    assert httpx.get(keyed.url + "/health").status_code == 200
    with pytest.raises(openai.AuthenticationError):
        client(keyed, "wrong").models.list()
    r = httpx.get(keyed.url + "/v1/models")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"]["type"] == "authentication_error"
    assert client(keyed, "key-a").models.list().data


@pytest.mark.native
def test_real_server_isolates_keys(keyed):
    msgs = [{"role": "user", "content": "The vault code is 4471. Say OK."}]
    r = client(keyed, "key-a").chat.completions.create(
        model="x", messages=msgs, max_tokens=8, temperature=0, extra_body={"session_id": "vault"})
    assert r.choices[0].message.content is not None
    r = httpx.post(keyed.url + "/v1/sessions/vault/save", headers=A, json={"name": "vault.pllam"})
    assert r.status_code == 200, r.text
    assert httpx.get(keyed.url + "/v1/sessions/vault", headers=B).status_code == 404
    assert httpx.get(keyed.url + "/v1/sessions/vault", headers={"Authorization": "Bearer key-b"}).status_code == 404
    r = httpx.post(keyed.url + "/v1/sessions/mine/restore", headers=B, json={"name": "vault.pllam"})
    assert r.status_code == 404 and keyed.state_dir.name not in r.text
    assert "vault" not in httpx.get(keyed.url + "/metrics", headers=B).text
    assert "vault" not in httpx.get(keyed.url + "/props", headers=B).text
    r = httpx.post(keyed.url + "/v1/sessions/back/restore", headers=A, json={"name": "vault.pllam"})
    assert r.status_code == 200, r.text


@pytest.mark.native
def test_real_server_error_bodies_have_no_paths(keyed):
    folder = owner_dir(keyed.state_dir, "key-a")
    folder.mkdir(exist_ok=True)
    (folder / "junk.pllam").write_bytes(b"not a saved session")
    bodies = [
        httpx.post(keyed.url + "/v1/sessions/s/restore", headers=A, json={"name": "junk.pllam"}),
        httpx.post(keyed.url + "/v1/sessions/s/restore", headers=A, json={"name": "missing.pllam"}),
        httpx.post(keyed.url + "/v1/sessions/s/restore", headers=A, json={"name": "../../etc/passwd"}),
    ]
    assert [r.status_code for r in bodies] == [409, 404, 400]
    assert "junk.pllam" in bodies[0].json()["error"]["message"]
    for r in bodies:
        assert str(keyed.state_dir) not in r.text and "/tmp" not in r.text and str(Path.cwd()) not in r.text, r.text


@pytest.mark.native
def test_real_server_caps_max_tokens_at_n_ctx(keyed):
    t0 = time.perf_counter()
    r = client(keyed, "key-a").completions.create(model="x", prompt=COUNTING, max_tokens=100_000_000, temperature=0)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 256
    assert time.perf_counter() - t0 < 120


@pytest.fixture(scope="module")
def long_runs(tmp_path_factory):
    """Generations of up to n_ctx tokens, so a stop by disconnect is plain to see."""
    srv = Server(tmp_path_factory.mktemp("long"), "--n-ctx", "1024", "--compact-threshold", "0",
                 "--max-tokens-cap", "100000", *ONE_THREAD)
    yield srv
    srv.stop()


def metric(srv: Server, name: str) -> float:
    for line in httpx.get(srv.url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def settled(srv: Server, sid: str) -> int:
    """The session's tokens once no request holds it and they stopped changing."""
    deadline, last = time.time() + 60, None
    while time.time() < deadline:
        info = httpx.get(f"{srv.url}/v1/sessions/{sid}").json()
        if not info["busy"] and info["n_tokens"] == last:
            return last
        last = info["n_tokens"] if not info["busy"] else None
        time.sleep(0.5)
    raise AssertionError(f"session {sid} still busy: {info}")


@pytest.mark.native
def test_streaming_generation_stops_when_the_client_goes(long_runs):
    before = metric(long_runs, "pyllamaam_requests_cancelled_total")
    body = {"prompt": COUNTING, "max_tokens": 100_000, "temperature": 0, "stream": True, "session_id": "sse"}
    chunks = 0
    with httpx.Client(timeout=60) as http, http.stream("POST", long_runs.url + "/v1/completions", json=body) as r:
        for line in r.iter_lines():
            chunks += line.startswith("data: ") and json.loads(line[6:])["choices"][0]["text"] != ""
            if chunks == 3:
                break
    n = settled(long_runs, "sse")
    assert n < 200, f"the generation went on after the client left: {n} tokens in the cache"
    assert metric(long_runs, "pyllamaam_requests_cancelled_total") == before + 1
    r = httpx.post(long_runs.url + "/v1/completions", json={"prompt": "Hello", "max_tokens": 4, "session_id": "sse"})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4


@pytest.mark.native
def test_plain_generation_stops_when_the_client_goes(long_runs):
    before = metric(long_runs, "pyllamaam_requests_cancelled_total")
    body = {"prompt": COUNTING, "max_tokens": 100_000, "temperature": 0, "session_id": "plain"}
    with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes the connection
        httpx.post(long_runs.url + "/v1/completions", json=body, timeout=httpx.Timeout(60, read=2))
    n = settled(long_runs, "plain")
    assert n < 600, f"the generation went on after the client left: {n} tokens in the cache (n_ctx 1024)"
    assert metric(long_runs, "pyllamaam_requests_cancelled_total") == before + 1
    r = httpx.post(long_runs.url + "/v1/completions", json={**body, "max_tokens": 4})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
