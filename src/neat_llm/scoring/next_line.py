"""Neurons chosen by what the model writes, to first order (METHOD.md section 6, the behavioural
readout): how much turning a neuron off lowers the likelihood of writing a concept text's last
line after the lines before it, on the concept's texts more than on the contrast texts.

For a text x of several lines (a demonstration prompt ``- s1\\n- s2\\n...\\n-`` as the generation
readout builds them: its last statement is the line written after the others),

    B(x) = mean over the last line's tokens of log p(token | everything before it),
    dB_k(x) ~= sum_t dB/da_k(x, t) * (a'_k(x, t) - a_k(x, t)),   a' = the intervention's value,
    score(k) = -mean_{x in P_fit} dB_k(x) + mean_{x in N_fit} dB_k(x),

the linear estimate (attribution patching) of the change of B when neuron k is turned off at every
position, so positive = turning it off makes the model less ready to write the concept's next line
than the contrast's. Every block counts (B is read at the logits, not at a reading layer).
Cost: one forward and one backward pass per fit text, for all neurons at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..concepts.representations import check_finite, token_batches
from ..hooks import capture_inputs, outputs_require_grad
from ..models.loaded import LoadedModel
from .base import Scorer, ScoringTask


def next_line_split(text: str) -> tuple[str, str]:
    """(context, last line) of a text of two or more lines: a demonstration prompt's trailing
    ``-`` (where the model would write) is dropped, so its last statement is the line predicted;
    a line starting with ``-`` keeps the ``-`` in the context (the model writes what follows it)."""
    body = text[:-1] if text.endswith("\n-") else text
    lines = body.rstrip("\n").split("\n")
    if len(lines) < 2 or not lines[-1].strip(" -"):
        raise ValueError(f"the next-line readout needs texts of two or more lines, the last one not empty "
                         f"(demonstration prompts: --readout generation); got {text[:80]!r}")
    head, last = "\n".join(lines[:-1]) + "\n", lines[-1]
    if last.startswith("-"):
        return head + "-", last[1:] + "\n"
    return head, last + "\n"


def next_line_effects(model: LoadedModel, texts: Sequence[str], layers: Sequence[int], edit_of,
                      batch_size: int = 8, on_texts=None) -> torch.Tensor:
    """The linear estimate of the change of B (module docstring) when each neuron of ``layers`` is
    changed by ``edit_of(layer)`` (a ``BlockEdit``: a -> a * scale + shift) at every position,
    averaged over ``texts``: [len(layers), d_ff] float32. ``on_texts(n)``: called as each batch of
    n texts is done (progress)."""
    layers = list(layers)
    split = [next_line_split(t) for t in texts]
    joint = [c + x for c, x in split]
    starts = [len(ids) for ids in model.tokenizer([c for c, _ in split])["input_ids"]]
    total = torch.zeros(len(layers), model.d_ff, dtype=torch.float64)
    sites = {l: model.sites[l] for l in layers}
    edits = {l: edit_of(l).to(model.device) for l in layers}
    emb = model.hf.get_input_embeddings()
    for rows in token_batches(model, joint, batch_size):
        enc = model.encode([joint[r] for r in rows], strict=True)
        mask = enc["attention_mask"]
        T = mask.shape[1]
        first = torch.tensor([max(1, starts[r]) for r in rows], device=mask.device)
        scored = mask[:, 1:].bool() & (torch.arange(1, T, device=mask.device)[None, :] >= first[:, None])
        n = scored.sum(1)
        if (n == 0).any():
            raise ValueError("a text's last line has no token of its own")
        with outputs_require_grad(emb), torch.enable_grad(), capture_inputs(sites) as acts:
            logits = model.logits(enc)[:, :-1].float()  # [B, T-1, V]
            target = enc["input_ids"][:, 1:]
            ll = logits.gather(-1, target[..., None]).squeeze(-1) - logits.logsumexp(-1)  # [B, T-1]
            b = (ll * scored).sum(1) / n  # [B]: B of each text
            a = [acts[l][0] for l in layers]
            grads = model.gradients(b.sum(), a, len(rows))  # texts are independent: per-text gradients
        m = mask[..., None].float()
        for i, l in enumerate(layers):
            x = a[i].detach().float()
            change = edits[l].delta(x)  # a' - a, [B, T, d_ff]
            d = (grads[i].float() * change * m).sum(1)  # [B, d_ff]
            check_finite(d, f"the next-line effect of block {l}")
            total[i] += d.sum(0).double().cpu()
        if on_texts:
            on_texts(len(rows))
    return (total / len(texts)).float()


class NextLineScorer(Scorer):
    """The first-order behavioural readout (module docstring): the drop of the next line's
    likelihood on the fit positives minus that on the fit contrast texts."""

    name = "next-line"

    def __init__(self, batch_size: int = 8):
        self.batch_size = batch_size

    def params(self) -> dict:
        return {"batch_size": self.batch_size}

    def _score(self, model: LoadedModel, task: ScoringTask, scores: torch.Tensor) -> None:
        pos, neg = task.fit_texts(self.name)
        layers = sorted(task.layers)
        edit = lambda l: task.edit_off(l, model.d_ff)  # noqa: E731
        n_neurons, n_texts = task.n_selected(model.n_layers, model.d_ff), len(pos) + len(neg)
        done = {"texts": 0, "told": 0}

        def tick(n: int) -> None:  # every neuron is scored by every text: progress in neurons, as a share of texts
            done["texts"] += n
            now = n_neurons * done["texts"] // n_texts
            if task.on_progress and now > done["told"]:
                task.on_progress(now - done["told"])
            done["told"] = now

        drop = -next_line_effects(model, pos, layers, edit, self.batch_size, tick) \
            + next_line_effects(model, neg, layers, edit, self.batch_size, tick)
        for i, l in enumerate(layers):
            idx = task.neurons_of(l, model.d_ff)
            scores[l, idx] = drop[i, idx]


__all__ = ["NextLineScorer", "next_line_effects", "next_line_split"]
