"""`python -m slimkit.serve MODEL_DIR [options]`: the `slimkit serve` command (slimkit/serve/cli.py).

This is how the vllm engine is started from its own environment
(`.venv-vllm/bin/python -m slimkit.serve ... --engine vllm`). vLLM spawns worker processes, which
import this module again: hence the `__main__` guard.
"""

if __name__ == "__main__":
    from slimkit.cli import main
    from slimkit.serve.cli import app

    main(app)
