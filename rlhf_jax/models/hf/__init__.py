"""Hugging Face checkpoints in and out: Llama (Llama 2/3, SmolLM, ...), Mistral, Qwen2 and
GPT-2 safetensors directories, and GGUF files of the Llama architecture.

    model, params = load("path/to/checkpoint")                 # policy: logits [B, T, V]
    model, params = load("path", kind="reward")                # RewardModel: [B, K]
    model, params = load("SmolLM2-135M-Instruct.Q4_1.gguf")    # dequantized to float32
    save("out/", model, params, tokenizer=tokenizer)           # transformers loads it
    save_adapters("out/adapter", lora_model, params)           # LoRA adapters, PEFT layout

On a mesh, each tensor goes straight into its shards: `load(path, mesh=mesh)`, or
`load(path, shardings=...)` with a tree of shardings (or a function of the abstract
boxed parameters returning one); `model_for(path)` gives the model first, to compute
them. Tokenizers: `rlhf_jax.hf.load_tokenizer`. Everything reads without PyTorch.
"""

from rlhf_jax.models.hf.checkpoint import SafetensorsCheckpoint
from rlhf_jax.models.hf.families import FAMILIES, CheckpointError
from rlhf_jax.models.hf.gguf_file import GGUFCheckpoint, read_gguf
from rlhf_jax.models.hf.loader import load, mesh_shardings, model_for, open_checkpoint, place
from rlhf_jax.models.hf.peft import peft_tensor_names, save_adapters
from rlhf_jax.models.hf.writer import save

__all__ = ["FAMILIES", "CheckpointError", "GGUFCheckpoint", "SafetensorsCheckpoint", "load",
           "mesh_shardings", "model_for", "open_checkpoint", "peft_tensor_names", "place", "read_gguf", "save",
           "save_adapters"]
