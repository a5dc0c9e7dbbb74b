"""`llm_bls` (Orchestrator, decoupled): the `llm` contract in one Python model over llm_engine.

Per client request, one thread runs `uip.llm.orchestrate.run`: the engine request is always
streaming, so stop strings and cancellation act between engine steps, and its responses are
queued so the request loop can poll `request.is_cancelled()` while it waits. A stop string or
a client cancel stops the engine request at once through llm_engine's `stop` input (same
request id, TensorRT-LLM's convention). All state is per request; the tokenizer is shared
read-only.

The engine is reached through the server's own gRPC endpoint by default (`engine_transport:
grpc`, see `uip.triton.engine_streams` for why); `engine_transport: bls` uses a decoupled BLS call,
which Triton 2.51's stub makes unsafe with several requests in flight.
"""

from __future__ import annotations

import threading
import uuid

from uip.core.settings import ModelSettings
from uip.llm.orchestrate import (
    ClientResponse,
    EngineStreamError,
    TextPipeline,
    client_outputs,
    run,
)
from uip.llm.preprocess import Limits, Preprocessor, model_max_positions
from uip.llm.tokenizer import tokenizer_for
from uip.triton import pb
from uip.triton.engine_streams import BlsEngineStream, GrpcEngineStream, engine_url


def _error_response(exc: Exception):
    """The client's error: llm_engine's own error (its code kept, but a dead or reloading engine
    is UNAVAILABLE, never INVALID_ARG: see uip.triton.engine_streams) or ours."""
    if isinstance(exc, EngineStreamError) and exc.error is not None:
        return pb.pb_utils.InferenceResponse(output_tensors=[], error=exc.error)
    return pb.error_response(exc)


class LlmBlsModel:
    def initialize(self, args: dict[str, str]) -> None:
        self.settings = ModelSettings.from_args(args)
        if not self.settings.decoupled:
            raise ValueError("llm_bls must be decoupled (model_transaction_policy)")
        folder = self.settings.artifact_dir()
        self.tokenizer = tokenizer_for(self.settings)
        self.pre = Preprocessor(self.tokenizer,
                                Limits.from_settings(self.settings, model_max_positions(folder)))
        self.engine_model = self.settings.param("engine_model", "llm_engine")
        self.poll_s = self.settings.param("cancel_poll_s", 0.05, float)
        self.transport = self.settings.param("engine_transport", "grpc")
        if self.transport not in ("grpc", "bls"):
            raise ValueError(f"llm_bls: engine_transport must be grpc or bls, not "
                             f"{self.transport!r}")
        self.engine_url = engine_url(self.settings.param("engine_url", ""))

    def _engine(self, inputs) -> GrpcEngineStream | BlsEngineStream:
        request_id = f"llm_bls-{uuid.uuid4().hex}"
        if self.transport == "bls":
            return BlsEngineStream(self.engine_model, inputs, request_id)
        return GrpcEngineStream(self.engine_url, self.engine_model, inputs, request_id)

    def execute(self, requests):
        # Parse in this (the stub's main) thread; each valid request then runs in its own.
        for request in requests:
            sender = request.get_response_sender()
            try:
                req = self.pre.parse(pb.inputs_of(request))
                inputs = self.pre.engine_inputs(req, streaming=True, stop_words=False)
            except Exception as exc:  # noqa: BLE001 - becomes this request's error
                sender.send(pb.error_response(exc), flags=pb.final_flag())
                continue
            threading.Thread(target=self._serve, args=(sender, req, inputs), daemon=True,
                             name="uip-llm-bls").start()
        return None

    def _serve(self, sender, req, inputs) -> None:
        done = False

        def send(resp: ClientResponse) -> None:
            nonlocal done
            done = done or resp.final
            pb.send(sender, client_outputs(resp, req), final=resp.final)

        engine = self._engine(inputs)
        try:
            try:
                run(TextPipeline(self.tokenizer, req), engine, send, sender.is_cancelled,
                    poll_s=self.poll_s)
            except BaseException:
                if not engine.ended:
                    try:
                        engine.stop()
                    except Exception:  # noqa: BLE001 - report the first failure, not this
                        pb.log.exception("llm_bls: could not stop the engine request")
                raise
        except Exception as exc:  # noqa: BLE001 - the client gets the error, the model lives on
            if not done:
                try:
                    sender.send(_error_response(exc), flags=pb.final_flag())
                except Exception:  # noqa: BLE001 - e.g. the client is gone
                    pb.log.exception("llm_bls: could not send the error response")
        finally:
            engine.close()

    def finalize(self) -> None:
        self.pre = None
