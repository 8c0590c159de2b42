import slimkit  # noqa: F401  (first: it sets OMP_WAIT_POLICY before torch loads)

# isort: split
import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    from slimkit.toy import make_tiny_model_dir

    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    from slimkit import artifacts

    return artifacts.load(tiny_dir)


@pytest.fixture(scope="session")
def tok():
    from slimkit.toy import toy_tokenizer

    return toy_tokenizer()
