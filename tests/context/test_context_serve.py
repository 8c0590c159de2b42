"""Online mode: a real gRPC server with --compress-items compresses the items before scoring and
reports the tokens saved; the scores are those of the compressed items."""

from __future__ import annotations

import sys

import pytest

from slimkit import cli
from slimkit.compress import context
from slimkit.serve.client import ScorerClient
from slimkit.serve.compression import ItemCompression
from slimkit.serve.server import make_server
from slimkit.serve.torch_engine import TorchEngine


@pytest.fixture(scope="module")
def servers(tiny_dir):
    engine = TorchEngine(tiny_dir)
    plain, p1 = make_server(engine, "127.0.0.1:0")
    squeezed, p2 = make_server(engine, "127.0.0.1:0", compression=ItemCompression.load(str(tiny_dir), 0.25))
    aware, p3 = make_server(engine, "127.0.0.1:0",
                            compression=ItemCompression.load(str(tiny_dir), 0.25, with_query=True))
    yield f"127.0.0.1:{p1}", f"127.0.0.1:{p2}", f"127.0.0.1:{p3}"
    for server in (plain, squeezed, aware):
        server.stop(0).wait()


def test_server_scores_compressed_items_and_reports_tokens_saved(servers, tiny_dir, postings):
    query = postings[0][0]
    items = [p for _, p in postings[:6]]
    comp = context.load(tiny_dir)
    for address, q in zip(servers[1:], (None, query), strict=True):
        with ScorerClient(servers[0]) as plain, ScorerClient(address) as squeezed:
            full = plain.score(query, items)
            short = squeezed.score(query, items)
            expected = [c.text for c in comp.compress(items, rate=0.25, query=q)]
            direct = plain.score(query, expected)
        assert full.tokens_saved == 0 and short.tokens_saved > 0
        assert sum(full.item_tokens) - sum(short.item_tokens) == short.tokens_saved
        assert short.scores == pytest.approx(direct.scores, abs=1e-5)


def test_bad_rate_and_compressor_without_rate_are_one_line_errors(tiny_dir, monkeypatch, capsys):
    with pytest.raises(context.ContextError, match="rate must be in"):
        ItemCompression.load(str(tiny_dir), 1.5)
    for args, message in [(["serve", str(tiny_dir), "--compressor", str(tiny_dir)], "need --compress-items"),
                          (["serve", str(tiny_dir), "--compress-items", "0"], "rate must be in (0, 1]")]:
        monkeypatch.setattr(sys, "argv", ["slimkit", *args])
        with pytest.raises(SystemExit) as e:
            cli.main()
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert e.value.code == 2 and len(err) == 1 and message in err[0]
