"""`uip lora list|load|unload`: LoRA control requests to the running server's engine model.

A control request is an inference request on the engine model's gRPC stream (its input
`lora_control`, see uip.llm.engine_tensors) carrying the admin key, which the model checks
against the key `uip serve` put behind Triton's restricted APIs. The engine model is
llm_engine, or llm_bls where it holds the engine itself (`engine_transport: local`, no
llm_engine): `--model llm_bls`. The model's metadata says which placeholders it needs beside
`lora_control` (llm_engine's ids, or llm_bls's `text_input`).
"""

from __future__ import annotations

import queue
from typing import TYPE_CHECKING

import typer

from uip.clients.tensors import grpc_inputs
from uip.llm import engine_tensors

if TYPE_CHECKING:
    import tritonclient.grpc as grpcclient


class LoraControlError(RuntimeError):
    """The server refused or failed the control request."""


def lora_control(url: str, op: str, name: str | None = None, key: str | None = None,
                 model: str = "llm_engine", timeout: float = 60.0) -> dict:
    """Send one control request; returns the engine's JSON answer (adapters on disk and on
    the device)."""
    import tritonclient.grpc as grpcclient

    events: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    try:
        inputs = _control_inputs(client, model, op, name, key)
        client.start_stream(callback=lambda result, error: events.put((result, error)))
        client.async_stream_infer(model, grpc_inputs(inputs))
        try:
            result, error = events.get(timeout=timeout)
        except queue.Empty:
            raise LoraControlError(f"no answer from {model} within {timeout} s") from None
        if error is not None:
            raise LoraControlError(str(error))
        return engine_tensors.decode_control_response(result.as_numpy("lora_status"))
    finally:
        client.stop_stream()
        client.close()


def _control_inputs(client: grpcclient.InferenceServerClient, model: str, op: str,
                    name: str | None, key: str | None) -> dict:
    """The control request's tensors for `model`, as its metadata says (see the module)."""
    from tritonclient.utils import InferenceServerException

    try:
        names = {t.name for t in client.get_model_metadata(model).inputs}
    except InferenceServerException as e:
        raise LoraControlError(str(e)) from None
    if "lora_control" not in names:
        raise LoraControlError(f"{model} takes no LoRA control requests: the engine model is "
                               "llm_engine, or llm_bls with engine_transport: local")
    return engine_tensors.encode_control(op, name, key, text="input_ids" not in names)


def _run(op: str, name: str | None, url: str, key: str | None, model: str) -> None:
    try:
        status = lora_control(url, op, name, key, model)
    except LoraControlError as e:
        typer.echo(f"uip lora {op}: {e}", err=True)
        raise typer.Exit(1) from None
    if not status.get("enabled"):
        typer.echo(f"{model} serves no LoRA adapters (no lora_dir parameter)")
        return
    loaded = {a["name"]: a for a in status["loaded"]}
    typer.echo(f"adapters under {status['directory']} (max rank {status['max_rank']}):")
    for adapter in sorted(set(status["available"]) | set(loaded)):
        where = "loaded" if adapter in loaded else "on disk"
        if adapter in loaded and "requests" in loaded[adapter]:
            where += f", {loaded[adapter]['requests']} requests running"
        typer.echo(f"  {adapter}  ({where})")


_URL = typer.Option("localhost:8001", help="the server's gRPC host:port")
_KEY = typer.Option(None, envvar="UIP_ADMIN_KEY", help="the server's admin key")
_MODEL = typer.Option("llm_engine", help="the model holding the engine: llm_engine, or llm_bls "
                      "with engine_transport: local")


def lora_list(url: str = _URL, admin_key: str = _KEY, model: str = _MODEL) -> None:
    """List the adapters: those under lora_dir, and those loaded on the device."""
    _run("list", None, url, admin_key, model)


def lora_load(name: str = typer.Argument(..., help="adapter folder name under lora_dir"),
              url: str = _URL, admin_key: str = _KEY, model: str = _MODEL) -> None:
    """(Re)load an adapter from disk now (requests load one on first use anyway)."""
    _run("load", name, url, admin_key, model)


def lora_unload(name: str = typer.Argument(...), url: str = _URL, admin_key: str = _KEY,
                model: str = _MODEL) -> None:
    """Drop an adapter from the device cache (its next request reads it from disk again)."""
    _run("unload", name, url, admin_key, model)


def register(app: typer.Typer) -> None:
    lora_app = typer.Typer(help="LoRA adapters of the running server's llm_engine (--model "
                           "llm_bls where llm_bls holds the engine: engine_transport local).",
                           no_args_is_help=True)
    lora_app.command("list")(lora_list)
    lora_app.command("load")(lora_load)
    lora_app.command("unload")(lora_unload)
    app.add_typer(lora_app, name="lora")
