"""OpenAI-compatible gateway over Triton (an edge: tritonclient as a client, FastAPI app)."""
