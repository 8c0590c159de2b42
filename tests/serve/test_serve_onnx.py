"""ONNX export and int8 (`slimkit quantize --scheme onnx-fp32|onnx-int8`, run in .venv-onnx as a
subprocess) and the onnxruntime engine on a real port: agrees with the torch engine within 1e-3 for
fp32; int8 loads, scores close to it, and the same whatever else is in the batch."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
from serve_data import ITEMS, QUERY, many_items

from slimkit.compress.quantize import ENVS, ROOT, quantize
from slimkit.serve.client import ScorerClient, ScorerError

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (ROOT / ENVS["onnx"] / "bin/python").exists(),
                                 reason="no .venv-onnx: run `make .venv-onnx/.installed`")]


def export(src, out, *, int8=False, overwrite=False):
    return quantize(src, "onnx-int8" if int8 else "onnx-fp32", out, n=16, overwrite=overwrite)


@pytest.fixture(scope="module")
def onnx_dirs(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx")
    return export(tiny_dir, root / "fp32"), export(tiny_dir, root / "int8", int8=True)


@pytest.fixture(scope="module")
def onnx_client(onnx_dirs):
    from slimkit.serve.onnx_engine import OnnxEngine
    from slimkit.serve.server import make_server

    server, port = make_server(OnnxEngine(onnx_dirs[0]), "127.0.0.1:0")
    with ScorerClient(f"127.0.0.1:{port}", timeout=60) as c:
        yield c
    server.stop(0).wait()


def test_export_dir(onnx_dirs, tiny_dir):
    fp32, int8 = onnx_dirs
    manifest = json.loads((fp32 / "slimkit.json").read_text())
    assert manifest["stage"] == "quantize" and manifest["parent"]["path"] == str(tiny_dir)
    assert manifest["recipe"]["scheme"] == "onnx-fp32" and manifest["recipe"]["n"] == 16
    assert (fp32 / "tokenizer.json").is_file() and (fp32 / "model.onnx").is_file()
    cfg = json.loads((fp32 / "config.json").read_text())
    src = json.loads((tiny_dir / "config.json").read_text())
    assert cfg["rope_theta"] == src["rope_parameters"]["rope_theta"]
    assert (int8 / "model.onnx").stat().st_size < (fp32 / "model.onnx").stat().st_size


@pytest.mark.parametrize("norm", ["labels", "vocab", "logit_diff"])
def test_onnx_agrees_with_torch(onnx_client, client, norm):
    items = ITEMS + many_items(20)
    for item_first in (False, True):
        o = onnx_client.score(QUERY, items, normalization=norm, item_first=item_first)
        t = client.score(QUERY, items, normalization=norm, item_first=item_first)
        np.testing.assert_allclose(o.label_logprobs, t.label_logprobs, atol=1e-3, rtol=0)
        np.testing.assert_allclose(o.scores, t.scores, atol=1e-3, rtol=0)


def test_onnx_without_prefix_sharing_and_int8(onnx_dirs, torch_engine):
    from slimkit.serve.onnx_engine import OnnxEngine
    from slimkit.serve.prompt import PromptTemplate
    from slimkit.serve.requests import make_job

    job = make_job(torch_engine.tokenizer, PromptTemplate(), QUERY, many_items(9), normalization="vocab",
                   vocab_size=torch_engine.vocab_size)
    (want,) = torch_engine.score([job])
    (got,) = OnnxEngine(onnx_dirs[0], share_prefix=False, max_batch=4).score([job])
    np.testing.assert_allclose(got, want, atol=1e-3, rtol=0)
    int8 = OnnxEngine(onnx_dirs[1])
    assert int8.dtype == "int8"
    (q,) = int8.score([job])
    # quantized: close, and not equal. Measured on this model and job: 0.003 in earlier runs, 0.012 in
    # one clean-clone run (not traced); int8 moves the toy teacher's log P(yes) by up to 0.95
    np.testing.assert_allclose(q, want, atol=0.03, rtol=0)
    assert np.abs(q - want).max() > 1e-5


def test_int8_scores_do_not_depend_on_the_batch(onnx_dirs, torch_engine):
    """Static activation scales: an item's int8 score is the same alone, in batches of any size, with
    and without the shared prefix (dynamic scales moved it by up to 1.6e-2)."""
    from slimkit.serve.onnx_engine import OnnxEngine
    from slimkit.serve.prompt import PromptTemplate
    from slimkit.serve.requests import make_job

    items = ITEMS + many_items(30)
    job = make_job(torch_engine.tokenizer, PromptTemplate(), QUERY, items, normalization="vocab",
                   vocab_size=torch_engine.vocab_size)
    alone = [OnnxEngine(onnx_dirs[1]).score([make_job(torch_engine.tokenizer, PromptTemplate(), QUERY, [it],
                                                     normalization="vocab", vocab_size=torch_engine.vocab_size)])[0][0]
             for it in items[:6]]
    runs = [OnnxEngine(onnx_dirs[1], max_batch=b, share_prefix=s).score([job])[0]
            for b, s in ((1, True), (5, True), (64, True), (7, False))]
    for got in runs[1:]:
        np.testing.assert_allclose(got, runs[0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.array(alone), runs[0][:6], atol=1e-5, rtol=0)


def test_onnx_dtype_is_the_exports_own(onnx_dirs):
    """--dtype is not applied by onnxruntime: the export's own precision is reported, another refused."""
    from slimkit.errors import SlimkitError
    from slimkit.serve.onnx_engine import OnnxEngine

    assert OnnxEngine(onnx_dirs[0]).dtype == "float32" and OnnxEngine(onnx_dirs[0], dtype="float32").dtype == "float32"
    with pytest.raises(SlimkitError, match="float32 ONNX export.*cannot apply --dtype bfloat16"):
        OnnxEngine(onnx_dirs[0], dtype="bfloat16")
    with pytest.raises(SlimkitError, match="int8 ONNX export.*cannot apply --dtype float32"):
        OnnxEngine(onnx_dirs[1], dtype="float32")


def test_onnx_logprobs_and_errors(onnx_client, client):
    o = onnx_client.logprobs("Query:\npython developer", " in berlin", top_k=4)
    t = client.logprobs("Query:\npython developer", " in berlin", top_k=4)
    np.testing.assert_allclose([x.logprob for x in o.tokens], [x.logprob for x in t.tokens], atol=1e-3)
    assert [[x.token_id for x in p] for p in o.top] == [[x.token_id for x in p] for p in t.top]
    assert onnx_client.model_info().engine == "onnxruntime"
    with pytest.raises(ScorerError) as e:
        onnx_client.score(QUERY, ITEMS, labels=["yes", "no", "x"], normalization="logit_diff")
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert len(onnx_client.score(QUERY, ITEMS[:1]).scores) == 1


def test_export_error_is_clear(tmp_path):
    from slimkit.errors import SlimkitError

    with pytest.raises(SlimkitError, match="does not exist"):
        export(tmp_path / "missing", tmp_path / "out")


def test_export_replaces_its_own_output_only_with_overwrite(onnx_dirs, tiny_dir):
    from slimkit.errors import SlimkitError

    fp32 = onnx_dirs[0]
    before = (fp32 / "model.onnx").stat().st_mtime_ns
    with pytest.raises(SlimkitError, match="pass --overwrite"):
        export(tiny_dir, fp32)
    assert (fp32 / "model.onnx").stat().st_mtime_ns == before
    export(tiny_dir, fp32, overwrite=True)
    assert (fp32 / "model.onnx").stat().st_mtime_ns != before
