"""Pretrained models: Hugging Face checkpoints and GGUF files in and out, and their tokenizers.

    from rlhf_jax import hf
    model, params = hf.load("path/to/checkpoint")            # or a .gguf file
    logits = model.apply({"params": params}, tokens, attention_mask)   # [B, T, V]
    tokenizer = hf.load_tokenizer("path/to/checkpoint")
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    hf.save("out/", model, params, tokenizer=tokenizer)
    hf.save_adapters("out/adapter", lora_model, params)   # LoRA adapters in the PEFT layout

The weights side is `rlhf_jax.models.hf`, the tokenizer side `rlhf_jax.data.tokenizer`.
"""

from rlhf_jax.data.tokenizer import HFTokenizer, load_hf_tokenizer as load_tokenizer, render_chat_template
from rlhf_jax.models.hf import (CheckpointError, load, mesh_shardings, model_for, open_checkpoint,
                                peft_tensor_names, place, save, save_adapters)

__all__ = ["CheckpointError", "HFTokenizer", "load", "load_tokenizer", "mesh_shardings", "model_for",
           "open_checkpoint", "peft_tensor_names", "place", "render_chat_template", "save", "save_adapters"]
