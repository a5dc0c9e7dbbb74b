"""TensorRT-LLM engine flow (TensorRT-LLM 1.2.x, pure logic; nothing here imports tensorrt_llm).

- `checkpoint`: what a Hugging Face checkpoint is (architecture, heads, layers), read from its
  config.json;
- `build`: a build request -> validation problems -> the exact command lines
  (convert_checkpoint.py or quantize.py, then trtllm-build);
- `engine`: what a built engine folder is (tp, pp, limits), read from its config.json;
- `fragment`: the spec fragment that points `llm_engine` at an engine;
- `gpus`: how many GPUs this process can see.
"""
