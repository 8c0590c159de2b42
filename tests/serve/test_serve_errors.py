"""Every handler answers a bad request with a named status and keeps serving; what the server's own
configuration gets wrong is found at start; a port that cannot be bound, a missing CUDA, a user's file
in the way: one line, no traceback."""

from __future__ import annotations

import socket
import subprocess
import sys

import grpc
import pytest
import torch
from serve_data import ITEMS, QUERY

from slimkit.errors import SlimkitError
from slimkit.serve.client import ScorerClient, ScorerError
from slimkit.serve.server import make_server


def _byte_tokenizer():
    """A byte-level tokenizer without merges: "yes" and "no" are several tokens each."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab["<eos>"] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>", pad_token="<eos>")


@pytest.fixture(scope="module")
def byte_server():
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from slimkit.serve.torch_engine import TorchEngine

    tok = _byte_tokenizer()
    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=len(tok), hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=32, intermediate_size=64, max_position_embeddings=4096,
                      tie_word_embeddings=True)
    engine = TorchEngine.from_model(Qwen3ForCausalLM(cfg), tok)
    server, port = make_server(engine, "127.0.0.1:0")
    yield f"127.0.0.1:{port}", tok
    server.stop(0).wait()


def test_default_labels_that_are_not_single_tokens_are_found_at_start(byte_server):
    """ModelInfo answers (no default label ids); a Score that relies on the defaults is FAILED_PRECONDITION;
    one that names its labels is served."""
    addr, tok = byte_server
    with ScorerClient(addr, timeout=60) as c:
        info = c.model_info()
        assert list(info.default_labels) == ["yes", "no"] and list(info.default_label_token_ids) == []
        with pytest.raises(ScorerError, match="default labels") as e:
            c.score(QUERY, ITEMS[:2])
        assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION
        res = c.score(QUERY, ITEMS[:2], labels=["y", "n"])
        assert len(res.scores) == 2
        with pytest.raises(ScorerError, match="continuation is empty") as e:
            c.logprobs("a prompt", "")
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert len(c.logprobs("a prompt", " more").tokens) == 5


@pytest.mark.parametrize("call, message", [
    (lambda c: c.logprobs("Query:", " x", top_k=-1), "top_k must be >= 0"),
    (lambda c: c.logprobs("", " x"), "prompt is empty"),
    (lambda c: c.logprobs("Query:", " spark" * 600), "tokens > the model's"),
    (lambda c: c.score(QUERY, ["ok", "spark " * 600]), "item 1 is too long"),
    (lambda c: c.score(QUERY, []), "items is empty"),
    (lambda c: c.score(QUERY, ["ok"], labels=["yes", "absolutely not"]), "not a single token"),
    (lambda c: c.score(QUERY, ["ok"], labels=[1, 10**6]), "outside the vocabulary"),
])
def test_logprobs_and_score_are_checked_before_the_engine(client, torch_engine, monkeypatch, call, message):
    """The request layer (slimkit.serve.requests) rejects these; the engine is never called with them."""
    calls = []
    for name in ("score", "logprobs"):
        real = getattr(torch_engine, name)
        monkeypatch.setattr(torch_engine, name, lambda jobs, real=real: calls.append(jobs) or real(jobs))
    with pytest.raises(ScorerError, match=message) as e:
        call(client)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT and calls == []


def test_an_unknown_normalization_value_is_invalid_argument(client):
    from slimkit.serve._proto import scorer_pb2 as pb

    with pytest.raises(grpc.RpcError) as e:
        client.stub.Score(pb.ScoreRequest(query=QUERY, items=["ok"], normalization=7), timeout=60)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "unknown normalization value 7" in e.value.details()


def test_a_bug_in_a_handler_is_internal_and_the_server_keeps_serving(client, torch_engine, monkeypatch):
    def broken(jobs):
        raise ValueError("a bug")

    monkeypatch.setattr(torch_engine, "score", broken)
    with pytest.raises(ScorerError) as e:
        client.score(QUERY, ITEMS)
    assert e.value.code == grpc.StatusCode.INTERNAL and "a bug" not in e.value.details
    monkeypatch.undo()
    assert len(client.score(QUERY, ITEMS).scores) == len(ITEMS)


def _listening_socket():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def test_a_port_in_use_is_one_clear_error(torch_engine, torch_server):
    with _listening_socket() as s:
        port = s.getsockname()[1]
        with pytest.raises(SlimkitError, match=f"cannot listen on 127.0.0.1:{port}: Address already in use"):
            make_server(torch_engine, f"127.0.0.1:{port}")
    with pytest.raises(SlimkitError, match="cannot listen"):        # another scorer's port: not shared
        make_server(torch_engine, torch_server)
    with pytest.raises(SlimkitError, match="port in 0..65535"):
        make_server(torch_engine, "127.0.0.1:99999")


def _slimkit(*args):
    return subprocess.run([sys.executable, "-m", "slimkit.cli", *args], capture_output=True, text=True, timeout=300)


def _one_line(r, *needles):
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message where CUDA is missing")
def test_serve_cuda_without_cuda_is_one_line(tiny_dir):
    _one_line(_slimkit("serve", str(tiny_dir), "--port", "0", "--device", "cuda"), "CUDA is not available")


def test_serve_option_errors_are_one_line(tiny_dir, tmp_path):
    with _listening_socket() as s:
        _one_line(_slimkit("serve", str(tiny_dir), "--port", str(s.getsockname()[1])), "Address already in use")
    _one_line(_slimkit("serve", str(tiny_dir), "--port", "0", "--template-item-first", "{item} {query}"),
              "--template-item-first needs --template")
    _one_line(_slimkit("serve", str(tiny_dir), "--port", "0", "--engine", "onnxruntime", "--device", "cpu"),
              "--device applies to the torch engine only")
    _one_line(_slimkit("serve", str(tiny_dir), "--port", "0", "--device", "tpu"), "'tpu' is not a device")
    _one_line(_slimkit("serve", str(tiny_dir), "--max-batch", "0"), "--max-batch")
    _one_line(_slimkit("serve", str(tiny_dir), "--port", "0", "--host", "0.0.0.0"), "refusing to serve plaintext")
    module = subprocess.run([sys.executable, "-m", "slimkit.serve", str(tiny_dir), "--max-batch", "0"],
                            capture_output=True, text=True, timeout=300)
    _one_line(module, "--max-batch", "python -m slimkit.serve --help")      # the same command, run as a module
    mine = tmp_path / "port.txt"
    mine.write_text("my notes")
    _one_line(_slimkit("serve", str(tiny_dir), "--port", "0", "--port-file", str(mine)), str(mine), "refusing")
    assert mine.read_text() == "my notes"
