"""`xmodel2 serve`: a real server in a subprocess, called with the `openai` client."""

import concurrent.futures
import http.client
import json
import time

import pytest

from serve_fixtures import running_server
from xmodel2.cli import main
from xmodel2.model.config import ModelConfig
from xmodel2.model.folder import build_model, load_model_folder, save_model_folder
from xmodel2.model.generate import continuation_text, generate_ids, stop_ids_for
from xmodel2.tokenizer import load_tokenizer

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

CONTEXT = 256
NAME = "tiny"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A random tiny μP model with a SentencePiece tokenizer (ChatML tokens included) trained here."""
    from xmodel2.data.corpus import corpus_file
    from xmodel2.tokenizer.train import MIN_LEARNED_PIECES, RESERVED_PIECES, train_tokenizer

    root = tmp_path_factory.mktemp("serve")
    train_tokenizer([corpus_file("math")], root / "tok", vocab_size=RESERVED_PIECES + MIN_LEARNED_PIECES + 200,
                    max_sentences=3000)
    vocab = load_tokenizer(root / "tok").vocab_size
    config = ModelConfig(vocab_size=vocab, hidden_size=64, intermediate_size=160, num_layers=2, num_heads=4,
                         num_kv_heads=2, max_position_embeddings=CONTEXT, mup={"dim_model_base": 32})
    return save_model_folder(build_model(config, seed=7).eval(), root / NAME, tokenizer_dir=root / "tok")


@pytest.fixture(scope="module")
def server(model_dir):
    with running_server(model_dir) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server, api_key="unused", max_retries=0, timeout=120)


def generate_text(model_dir, capsys, prompt: str, tokens: int) -> str:
    assert main(["generate", str(model_dir), "--prompt", prompt, "--max-new-tokens", str(tokens)]) == 0
    return capsys.readouterr().out.removesuffix("\n")


def test_completions_equal_xmodel2_generate_streamed_or_not(client, model_dir, capsys):
    prompt = "The sum of 12 and 30 is"
    expected = generate_text(model_dir, capsys, prompt, 24)
    reply = client.completions.create(model=NAME, prompt=prompt, max_tokens=24, temperature=0)
    assert reply.choices[0].text == expected
    assert reply.usage.completion_tokens <= 24 and reply.usage.prompt_tokens > 0
    chunks = list(client.completions.create(model=NAME, prompt=prompt, max_tokens=24, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_stop_strings_cut_the_text_and_finish_with_stop(client, model_dir, capsys):
    prompt = "Solve: 4 + 4 ="
    full = generate_text(model_dir, capsys, prompt, 40)
    stop = full.strip()[3:5]  # two characters from inside the greedy text
    assert stop and stop in full
    expected = full[:full.find(stop)]
    for stream in (False, True):
        if stream:
            chunks = list(client.completions.create(model=NAME, prompt=prompt, max_tokens=40, temperature=0,
                                                    stop=[stop], stream=True))
            text, finish = "".join(c.choices[0].text for c in chunks), chunks[-1].choices[0].finish_reason
        else:
            choice = client.completions.create(model=NAME, prompt=prompt, max_tokens=40, temperature=0,
                                               stop=[stop]).choices[0]
            text, finish = choice.text, choice.finish_reason
        assert (text, finish) == (expected, "stop")


def test_chat_uses_chatml_and_streams_the_same_text(client, model_dir):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"}]
    model, tokenizer = load_model_folder(model_dir).eval(), load_tokenizer(model_dir)
    prompt = tokenizer.encode_chat(messages, add_generation_prompt=True)
    new = generate_ids(model, [prompt], 20, stop_ids=stop_ids_for(model, tokenizer, chat=True))[0]
    expected = continuation_text(tokenizer, prompt, new)
    reply = client.chat.completions.create(model=NAME, messages=messages, max_tokens=20, temperature=0)
    assert reply.choices[0].message.content == expected
    assert reply.usage.prompt_tokens == len(prompt)
    chunks = list(client.chat.completions.create(model=NAME, messages=messages, max_tokens=20, temperature=0,
                                                 stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected


def test_concurrent_requests_each_get_their_own_greedy_text(client, model_dir):
    model, tokenizer = load_model_folder(model_dir).eval(), load_tokenizer(model_dir)
    prompts = [f"Question {i}: what is {i} times {i + 1}?" for i in range(6)]
    expected = []
    for prompt in prompts:
        ids = tokenizer.encode(prompt)
        expected.append(continuation_text(tokenizer, ids, generate_ids(model, [ids], 12,
                                                                       stop_ids=stop_ids_for(model, tokenizer))[0]))

    def ask(i):
        return client.completions.create(model=NAME, prompt=prompts[i], max_tokens=12, temperature=0).choices[0].text

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        assert list(pool.map(ask, range(6))) == expected


def raw_post(server: str, path: str, body: bytes) -> tuple[int, dict]:
    host, port = server.removeprefix("http://").removesuffix("/v1").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    connection.request("POST", f"/v1{path}", body=body, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    return response.status, json.loads(response.read())


@pytest.mark.parametrize("body, status, words", [
    (b'{"model": "tiny", "prompt": ', 400, "not valid JSON"),
    (json.dumps({"model": "gpt-4", "prompt": "hi"}).encode(), 404, "'gpt-4' does not exist"),
    (json.dumps({"model": NAME, "prompt": "hi", "max_tokens": -3}).encode(), 400, "'max_tokens' must be"),
    (json.dumps({"model": NAME, "prompt": "one two three " * 200}).encode(), 400, "maximum context length is 256"),
    (json.dumps({"model": NAME, "prompt": "hi", "max_tokens": CONTEXT}).encode(), 400, "max_tokens asks for 256"),
    (json.dumps({"model": NAME, "prompt": "hi", "temperature": 9}).encode(), 400, "'temperature' must be"),
    (json.dumps({"model": NAME, "prompt": ["a", "b"]}).encode(), 400, "one prompt per request"),
])
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(server, client, body, status, words):
    code, reply = raw_post(server, "/completions", body)
    assert code == status, reply
    assert set(reply["error"]) == {"message", "type", "param", "code"} and words in reply["error"]["message"]
    assert client.completions.create(model=NAME, prompt="still there?", max_tokens=2, temperature=0).choices


def test_openai_client_raises_on_refusals(client):
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="unknown role"):
        client.chat.completions.create(model=NAME, messages=[{"role": "wizard", "content": "hi"}])


def test_binds_to_localhost_unless_told(model_dir):
    from xmodel2.cli import build_parser

    args = build_parser().parse_args(["serve", str(model_dir)])
    assert args.host == "127.0.0.1"


def test_a_taken_port_is_one_line(model_dir, server, capsys):
    port = server.rsplit(":", 1)[1].removesuffix("/v1")
    started = time.perf_counter()
    assert main(["serve", str(model_dir), "--port", port]) == 2
    assert "cannot listen" in capsys.readouterr().err
    assert time.perf_counter() - started < 60
