"""pytest fixtures of the gateway tests (imported by tests/integration/test_gateway*.py)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from support.gateway import GatewayProcess
from support.postgres import Postgres
from support.server_metrics import metric  # noqa: F401 - the gateway tests import it here
from uip.core.paths import artifacts_root
from uip.gateway.spec import DEFAULT_GATEWAY_SPEC
from uip.launch.command import free_port

DATABASES = ["sqlite", "postgresql"]  # params of a fixture that calls database_url


def database_url(request, folder: Path, name: str = "gateway.db") -> str:
    """The database of a fixture parametrized over DATABASES: a new SQLite file in `folder`,
    or the session's PostgreSQL, emptied."""
    if request.param == "sqlite":
        return f"sqlite:///{folder / name}"
    pg = request.getfixturevalue("postgres")
    pg.reset()
    return pg.url


@pytest.fixture(scope="session")
def postgres():
    pg = Postgres().start()
    yield pg
    pg.stop()


@pytest.fixture(scope="session")
def llm_reference():
    """chat messages (or a prompt) -> greedy text of transformers `generate` on the tokens
    the chat template (or the tokenizer) gives, with the ids generated."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = artifacts_root() / "llm-tiny"
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()

    def reference(messages_or_prompt, max_tokens: int):
        if isinstance(messages_or_prompt, str):
            ids = tok(messages_or_prompt)["input_ids"]
        else:
            ids = tok.apply_chat_template(messages_or_prompt, add_generation_prompt=True,
                                          tokenize=True)["input_ids"]
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=max_tokens,
                                 do_sample=False)
        gen = out[0, len(ids):].tolist()
        return tok.decode(gen, skip_special_tokens=True), len(ids), gen, tok.eos_token_id

    return reference


def write_spec(folder: Path, port: int) -> Path:
    """The default gateway spec plus test routes: an external API (this gateway itself) and
    an unreachable one that falls back to llm_bls."""
    data = yaml.safe_load(DEFAULT_GATEWAY_SPEC.read_text())
    data["models"]["self-external"] = {
        "external": {"base_url": f"http://127.0.0.1:{port}/v1", "model": "llm_bls",
                     "api_key_env": "UIP_TEST_EXTERNAL_KEY"}}
    data["models"]["unreachable"] = {
        "external": {"base_url": f"http://127.0.0.1:{free_port()}/v1", "timeout_s": 5},
        "fallbacks": ["llm_bls"]}
    path = folder / "gateway.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def start_gateway(server, folder: Path, database_url: str, workers: int = 1) -> GatewayProcess:
    port = free_port()
    return GatewayProcess(server.grpc_url, database_url, folder / "gateway.log",
                          write_spec(folder, port), port,
                          env={"UIP_TEST_EXTERNAL_KEY": "unused"}, workers=workers).start()


def make_key(gw: GatewayProcess, name: str, *limits: str) -> str:
    """`uip keys create` as a user runs it; the key is the only line on stdout."""
    out = subprocess.run([sys.executable, "-c", "from uip.cli import main; main()", "keys",
                          "create", "--name", name, *limits], capture_output=True, text=True,
                         env={"UIP_DATABASE_URL": gw.database_url, "PATH": "/usr/bin:/bin"},
                         check=True)
    key = out.stdout.strip()
    assert key.startswith("uip-") and "\n" not in key and key not in out.stderr
    return key


def engine_idle(server, timeout: float) -> bool:
    """Whether llm_engine runs no sequence (uip_llm_active_sequences 0) within `timeout` s."""
    t0 = time.monotonic()
    while metric(server, "uip_llm_active_sequences") > 0:
        if time.monotonic() - t0 > timeout:
            return False
        time.sleep(0.05)
    return True
