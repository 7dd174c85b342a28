"""The label readout: S_tok(x) = log p(w+ | template(x)) - log p(w- | template(x)) at the last
position, e.g. template "Text: {text}\\nIs this text hateful? Answer:" with w+ = " Yes", w- = " No".
The softmax normaliser cancels, so S_tok is the logit difference."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.adapters import get_module
from ..models.loaded import LoadedModel

DEFAULT_TEMPLATE = "Text: {text}\nIs this text an example of {concept}? Answer:"


@dataclass(frozen=True)
class LabelReadout:
    template: str = DEFAULT_TEMPLATE
    concept: str = "the concept"
    positive_word: str = " Yes"
    negative_word: str = " No"

    def prompt(self, text: str) -> str:
        return self.template.format(text=text, concept=self.concept)

    def token_ids(self, model: LoadedModel) -> tuple[int, int]:
        ids = []
        for w in (self.positive_word, self.negative_word):
            t = model.tokenizer(w, add_special_tokens=False)["input_ids"]
            if len(t) != 1:
                raise ValueError(f"label word {w!r} is {len(t)} tokens for this tokenizer; choose single-token words")
            ids.append(t[0])
        if ids[0] == ids[1]:
            raise ValueError("the positive and negative label words map to the same token")
        return ids[0], ids[1]

    def from_logits(self, model: LoadedModel, logits: torch.Tensor) -> torch.Tensor:
        """logits [..., vocab] -> S_tok [...]"""
        yes, no = self.token_ids(model)
        return logits[..., yes].float() - logits[..., no].float()

    def scores(self, model: LoadedModel, texts, batch_size: int = 16) -> torch.Tensor:
        """S_tok of every text's prompt, from full forward passes (under whatever intervention is
        active): [N] float32. Right padding: each prompt is read at its own last token."""
        return self.scores_along(model, texts, 1, batch_size)[0]

    @torch.inference_mode()
    def scores_along(self, model: LoadedModel, texts, replicas: int, batch_size: int = 16) -> torch.Tensor:
        """``scores`` under each of ``replicas`` conditions along the batch
        (``interventions.conditions_along_batch``): [G, N] float32."""
        from .representations import logit_token_budget, repeat_rows, token_batches

        prompts = [self.prompt(t) for t in texts]
        G = replicas
        out = torch.empty(G, len(prompts))
        for rows in token_batches(model, prompts, batch_size, logit_token_budget(model, G)):
            enc = model.encode([prompts[i] for i in rows])
            logits = model.logits(repeat_rows(enc, G))  # [G*B, T, V]
            last = (enc["attention_mask"].sum(1) - 1).repeat(G)  # [G*B]
            s = self.from_logits(model, logits[torch.arange(G * len(rows)), last])
            out[:, rows] = s.reshape(G, len(rows)).cpu()
        return out

    def from_residual(self, model: LoadedModel, h: torch.Tensor) -> torch.Tensor:
        """S_tok of residual vectors read directly through the final norm and unembedding
        (logit-lens style): h [..., d_model] -> [...]. Final-logit soft-capping is applied when the
        model has it."""
        yes, no = self.token_ids(model)
        norm = get_module(model.hf, model.family.final_norm)
        unembed = get_module(model.hf, model.family.unembed)
        w = unembed.weight[[yes, no]]  # [2, d]
        z = norm(h.to(model.dtype)) @ w.T  # [..., 2]
        if getattr(unembed, "bias", None) is not None:
            z = z + unembed.bias[[yes, no]]
        cap = getattr(model.hf.config, "final_logit_softcapping", None)
        if cap:
            z = torch.tanh(z / cap) * cap
        return (z[..., 0] - z[..., 1]).float()
