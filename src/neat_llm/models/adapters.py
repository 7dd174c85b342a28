"""Declarative table of model families: where the blocks, the neuron site, the final norm and
the unembedding live in a Hugging Face causal LM.

The neuron site of block l is the *input* of the MLP down projection: after the activation and,
in gated MLPs, after the gate (``act(gate(x)) * up(x)``). Its width is d_ff.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class ModelFamily:
    """Where things are in one family of models (all paths are attribute paths).

    down_layout: how the down projection stores its weight: ``"linear"`` is ``nn.Linear``
        ([d_model, d_ff]); ``"conv1d"`` is GPT-2's ``Conv1D`` ([d_ff, d_model]).
    mlp_output_direct: True when the down projection's output is added to the residual stream
        unchanged (no norm after the MLP). Then turning neuron k off changes the block's output by
        exactly ``-a_k * W_out[:, k]``, which the fast sweep uses instead of re-running the block.
    attn: the attention module inside a block (its output's first element is what it writes).
    attn_output_direct: True when that output is added to the residual stream unchanged.
    mlp_out_norm: where the MLP output is not added unchanged, the RMS norm inside a block that it
        goes through first (y = scale * h / rms(h)); norm_offset: that norm scales by
        ``norm_offset + weight`` (Gemma: 1). Where the neuron-write edit takes what chosen neurons
        write along a residual direction out of that norm's output.
    """

    name: str
    model_types: tuple[str, ...]
    blocks: str
    site: str
    final_norm: str
    unembed: str
    down_layout: str = "linear"
    mlp_output_direct: bool = True
    attn: str = "self_attn"
    attn_output_direct: bool = True
    mlp_out_norm: str | None = None
    norm_offset: float = 0.0


FAMILIES: tuple[ModelFamily, ...] = (
    ModelFamily("llama", ("llama", "mistral", "qwen2", "qwen3", "phi3"),
                blocks="model.layers", site="mlp.down_proj", final_norm="model.norm", unembed="lm_head"),
    ModelFamily("gemma", ("gemma",),
                blocks="model.layers", site="mlp.down_proj", final_norm="model.norm", unembed="lm_head"),
    # Gemma 2/3 normalise the MLP and attention outputs before adding them to the residual stream.
    ModelFamily("gemma2", ("gemma2", "gemma3_text"),
                blocks="model.layers", site="mlp.down_proj", final_norm="model.norm", unembed="lm_head",
                mlp_output_direct=False, attn_output_direct=False, mlp_out_norm="post_feedforward_layernorm",
                norm_offset=1.0),
    ModelFamily("gpt2", ("gpt2",),
                blocks="transformer.h", site="mlp.c_proj", final_norm="transformer.ln_f", unembed="lm_head",
                down_layout="conv1d", attn="attn"),
    ModelFamily("gpt_neox", ("gpt_neox",),
                blocks="gpt_neox.layers", site="mlp.dense_4h_to_h", final_norm="gpt_neox.final_layer_norm",
                unembed="lm_head", attn="attention"),
)


class UnsupportedModelError(ValueError):
    """The model's architecture is not in the adapter table."""


def family_for(model_type: str) -> ModelFamily:
    for fam in FAMILIES:
        if model_type in fam.model_types:
            return fam
    known = sorted(t for f in FAMILIES for t in f.model_types)
    raise UnsupportedModelError(
        f"model_type {model_type!r} is not supported. Supported: {', '.join(known)}. To add it, append a "
        "ModelFamily to neat_llm.models.adapters.FAMILIES naming its blocks (e.g. 'model.layers'), the "
        "neuron site inside a block (the MLP down projection, e.g. 'mlp.down_proj'), the final norm and "
        "the unembedding, and whether the MLP output is added to the residual stream unnormalised."
    )


def get_module(root: nn.Module, path: str) -> nn.Module:
    """``root.a.b.0.c`` style lookup with an error that names the missing part."""
    mod = root
    for part in path.split("."):
        if not hasattr(mod, part):
            raise UnsupportedModelError(
                f"{type(root).__name__} has no module {path!r} (stopped at {part!r}); the adapter table "
                "entry for this family does not match this model"
            )
        mod = getattr(mod, part)
    return mod


def down_weight_columns(weight, layout: str):
    """The down projection's output vectors, one row per neuron: [d_ff, d_model]."""
    return weight.T if layout == "linear" else weight
