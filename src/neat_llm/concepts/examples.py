"""The top-activating examples of a run's top neurons, with every token's activation, for the report.

Written by ``find`` as ``examples.json`` beside the run (the report itself never loads the model).
The candidate examples come from the activation statistics of find's pass over the fit texts
(each neuron's 8 largest activations and where they occurred, positives and contrast apart); one
more forward pass over just the distinct texts chosen reads the chosen neurons at every token.

examples.json = {"per_neuron": int, "window": int, "neurons": [{"layer", "neuron", "mean_positive",
"mean_contrast", "examples": [{"side": "positive"|"contrast", "text_index": int, "max": float,
"max_pos": int, "offset": int, "truncated_left": bool, "truncated_right": bool,
"tokens": [str], "acts": [float]}]}]}
"""

from __future__ import annotations

import torch

from .representations import batches, check_finite
from ..hooks import capture_inputs
from ..models.loaded import LoadedModel



def _candidates(stats, side: str, layer: int, neuron: int):
    for v, t, p in zip(stats.top_values[layer, neuron].tolist(), stats.top_text[layer, neuron].tolist(),
                       stats.top_pos[layer, neuron].tolist()):
        if t >= 0 and v == v and v != float("-inf"):
            yield v, side, t, p


@torch.inference_mode()
def neuron_examples(model: LoadedModel, texts: dict[str, list[str]], stats: dict, neurons: list[tuple[int, int]], *,
                    per_neuron: int = 4, window: int = 48, batch_size: int = 16) -> dict:
    """For each (layer, neuron): its ``per_neuron`` distinct texts (by string) with the highest activation
    (positives and contrast together), each with the tokens and the neuron's activation at every
    token (a ``window``-token span around the maximum for long texts).

    texts: {"positive": [...], "contrast": [...]}, the texts ``stats`` (TextPass with neuron
    statistics, same keys) were computed on. Cost: one forward pass per distinct chosen text."""
    chosen: list[tuple[int, int, list]] = []
    needed: dict[tuple[str, int], None] = {}
    for l, k in neurons:
        cands = sorted((c for side in texts for c in _candidates(stats[side], side, l, k)), key=lambda c: -c[0])
        seen, picked = set(), []
        for v, side, t, p in cands:
            if texts[side][t] not in seen:  # by text: a data set may hold the same text twice
                seen.add(texts[side][t])
                picked.append((v, side, t, p))
                needed[(side, t)] = None
            if len(picked) == per_neuron:
                break
        chosen.append((l, k, picked))
    keys = list(needed)
    layers = sorted({l for l, _ in neurons})
    sites = {l: model.sites[l] for l in layers}
    acts: dict[tuple[str, int], dict[int, torch.Tensor]] = {}  # (side, text) -> {layer: [T, d_ff]}
    ids_of: dict[tuple[str, int], list[int]] = {}
    for rows in batches(len(keys), batch_size):
        batch = [keys[r] for r in rows]
        enc = model.encode([texts[s][t] for s, t in batch])
        lengths = enc["attention_mask"].sum(1).tolist()
        with capture_inputs(sites) as got:
            model.forward(enc)
        for i, key in enumerate(batch):
            n = int(lengths[i])
            ids_of[key] = enc["input_ids"][i, :n].tolist()
            acts[key] = {}
        for l in layers:
            a = got[l][0].float().cpu()  # [B, T, d_ff]
            check_finite(a, f"the neuron activations of block {l}")
            for i, key in enumerate(batch):
                acts[key][l] = a[i, : len(ids_of[key])]
    token_text = {}
    out = []
    for l, k, picked in chosen:
        exs = []
        for v, side, t, p in picked:
            ids = ids_of[(side, t)]
            row = acts[(side, t)][l][:, k]  # [T]
            a = max(0, min(p - window // 2, len(ids) - window))
            b = min(len(ids), a + window)
            toks = []
            for tid in ids[a:b]:
                if tid not in token_text:
                    token_text[tid] = model.tokenizer.decode([tid])
                toks.append(token_text[tid])
            exs.append({"side": side, "text_index": int(t), "max": float(v), "max_pos": int(p), "offset": a,
                        "truncated_left": a > 0, "truncated_right": b < len(ids), "tokens": toks,
                        "acts": [round(float(x), 4) for x in row[a:b]]})
        mp = stats["positive"].neuron_sum[l, k] / max(stats["positive"].n_tokens, 1)
        mc = stats["contrast"].neuron_sum[l, k] / max(stats["contrast"].n_tokens, 1)
        out.append({"layer": int(l), "neuron": int(k), "mean_positive": float(mp), "mean_contrast": float(mc),
                    "examples": exs})
    return {"per_neuron": per_neuron, "window": window, "neurons": out}
