"""`tokenmill serve`: llama.cpp's own server behind the real `openai` client on 127.0.0.1. Greedy text
equals `tokenmill generate` on the GGUF and, for a chat, transformers' chat template and greedy generate on
the HF folder; streaming, concurrency, bad requests, the API key, the bind address and clean stops."""

import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("xllamacpp")
KEY = "test-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model, port, *extra):
    proc = subprocess.Popen([sys.executable, "-m", "tokenmill", "serve", str(model), "--port", str(port), *extra,
                             "--ctx-size", "512", "--parallel", "4", "--threads", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except (urllib.error.URLError, ConnectionError, OSError):
            if proc.poll() is not None:
                raise AssertionError(proc.stdout.read())
            time.sleep(0.3)
    proc.kill()
    raise AssertionError("the server did not become healthy")


@pytest.fixture(scope="module")
def server(smollm2):
    port = free_port()
    proc = start_server(smollm2, port, "--api-key", KEY)  # a HF folder: exported to f16 GGUF once, beside it
    yield port, proc
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{server[0]}/v1", api_key=KEY)


def test_greedy_completion_equals_tokenmill_generate_and_streams_the_same(client, smollm2, capsys):
    from tokenmill.cli import main
    prompt = "The capital of France is"
    served = client.completions.create(model="m", prompt=prompt, max_tokens=16, temperature=0).choices[0].text
    gguf = smollm2.parent / f"{smollm2.name}-f16.gguf"
    assert gguf.is_file()
    capsys.readouterr()
    assert main(["generate", str(gguf), "--prompt", prompt, "--max-new-tokens", "16", "--temperature", "0"]) == 0
    assert capsys.readouterr().out.strip() == (prompt + served).strip()
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="m", prompt=prompt, max_tokens=16, temperature=0, stream=True))
    assert streamed == served and len(served) > 10


def test_chat_equals_transformers_chat_template_and_greedy_generate(client, smollm2):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    messages = [{"role": "user", "content": "Name three colours."}]
    served = client.chat.completions.create(model="m", messages=messages, max_tokens=20, temperature=0)
    text = served.choices[0].message.content
    tok = AutoTokenizer.from_pretrained(smollm2)
    model = AutoModelForCausalLM.from_pretrained(smollm2)
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=20, do_sample=False)
    assert text == tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="m", messages=messages, max_tokens=20, temperature=0, stream=True))
    assert streamed == text


def test_eight_concurrent_requests_are_all_answered(client):
    answers = {}

    def ask(i):
        answers[i] = client.completions.create(model="m", prompt=f"Count to {i}:", max_tokens=8,
                                               temperature=0).choices[0].text
    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(answers) == list(range(8)) and all(answers.values())


def test_models_health_bad_requests_and_the_key(server, client):
    port, _ = server
    assert [m.id for m in client.models.list().data]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health") as r:
        assert json.loads(r.read())["status"] == "ok"
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=b'{"prompt": 5, "max_tokens": "x"}',
                                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
    with pytest.raises(urllib.error.HTTPError) as bad:
        urllib.request.urlopen(request)
    assert 400 <= bad.value.code < 500 and "error" in json.loads(bad.value.read())
    anonymous = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="wrong")
    with pytest.raises(openai.AuthenticationError):
        anonymous.completions.create(model="m", prompt="x", max_tokens=1)


def listening_addresses(port: int) -> set[str]:
    """Local addresses of the TCP sockets listening on `port` (from /proc/net/tcp)."""
    found = set()
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if int(hex_port, 16) == port and state == "0A":
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


def test_binds_to_loopback_and_stops_cleanly_on_sigterm_and_ctrl_c(server, smollm2):
    port, _ = server
    assert listening_addresses(port) == {"127.0.0.1"}
    gguf = smollm2.parent / f"{smollm2.name}-f16.gguf"
    for sig in (signal.SIGTERM, signal.SIGINT):
        other = free_port()
        proc = start_server(gguf, other)
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == 0
        assert "stopping" in proc.stdout.read()
        assert not listening_addresses(other)
