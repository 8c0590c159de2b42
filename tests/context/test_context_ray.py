"""Offline mode as a Ray Data job, against a local Ray instance that the test starts: the same output
as the in-process run, in input order."""

from __future__ import annotations

import json

import pytest

from slimkit.compress.context.offline import compress_file

ray = pytest.importorskip("ray")


@pytest.mark.slow
def test_ray_job_matches_the_local_run(tmp_path, postings):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": i, "text": p, "query": q}) + "\n" for i, (q, p) in enumerate(postings)))
    kw = dict(rate=0.25, query_field="query", tokenizer="toy:teacher", batch_size=5)
    compress_file(src, tmp_path / "local.jsonl", "random", **kw)
    res = compress_file(src, tmp_path / "ray.jsonl", "random", ray_address="local", ray_workers=1, **kw)
    assert res["rows"] == len(postings)
    assert (tmp_path / "ray.jsonl").read_text() == (tmp_path / "local.jsonl").read_text()
    assert not ray.is_initialized()                # the job shut down the instance it started
