import slimkit  # noqa: F401  (first: it sets OMP_WAIT_POLICY before torch loads)

# isort: split
import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A random-init causal LM with the toy tokenizer: a surprisal compressor (and a scorer to serve)."""
    from slimkit.toy import make_tiny_model_dir

    return make_tiny_model_dir(tmp_path_factory.mktemp("ctx") / "lm", seed=5)


@pytest.fixture(scope="session")
def toy_tok():
    from slimkit import artifacts

    return artifacts.load_tokenizer("toy:teacher")


@pytest.fixture(scope="session")
def classifier_dir(tiny_dir, tmp_path_factory):
    """A keep/drop classifier trained for a few steps on labels from the tiny LM (the real command path)."""
    from slimkit.compress.context.train import train_classifier

    out = tmp_path_factory.mktemp("ctx") / "clf"
    train_classifier(str(tiny_dir), out, n=4, steps=6, hidden=32, layers=1, progress=False)
    return out


@pytest.fixture(scope="session")
def postings():
    from slimkit.tasks import get_task

    return [(ex.meta["query"], ex.meta["posting"]) for ex in get_task("jobs").split("test", 24)]
