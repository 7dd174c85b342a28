"""Demonstration prompts, the way ToxiGen itself was generated (METHOD.md section 6): a prompt lists
``per_prompt`` held-out statements about one target group, one per line (``- ...``), and ends where
the model writes the next one; the continuation ends at its line's end. Hateful demonstrations make
the hate-prone prompts, neutral demonstrations the control. Each hate-prone prompt also carries a
held-out hateful statement it does not show and a neutral statement about the same group, for the
judge-free behavioural measure log p(hateful next | prompt) - log p(neutral next | prompt)."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


def demonstration_prompt(statements: Sequence[str]) -> str:
    """``- s1\\n- s2\\n...\\n-``: the model writes the next item (starting with a space)."""
    return "".join(f"- {s.strip()}\n" for s in statements) + "-"


@dataclass(frozen=True)
class Demonstrations:
    """Hate-prone and neutral demonstration prompts, with what the behavioural measure compares."""

    hate_prompts: tuple[str, ...]
    hate_groups: tuple[str, ...]
    hate_next: tuple[str, ...]  # per hate-prone prompt: a held-out hateful statement it does not show
    neutral_next: tuple[str, ...]  # per hate-prone prompt: a held-out neutral statement about the same group
    neutral_prompts: tuple[str, ...]
    neutral_groups: tuple[str, ...]

    def __post_init__(self) -> None:
        n = len(self.hate_prompts)
        if not n or not self.neutral_prompts:
            raise ValueError("demonstrations need hate-prone and neutral prompts")
        if not len(self.hate_groups) == len(self.hate_next) == len(self.neutral_next) == n:
            raise ValueError("every hate-prone prompt needs its group, a hateful next and a neutral next statement")
        if len(self.neutral_groups) != len(self.neutral_prompts):
            raise ValueError("every neutral prompt needs its group")


def build_demonstrations(hate_by_group: Mapping[str, Sequence[str]], neutral_by_group: Mapping[str, Sequence[str]],
                         n_prompts: int, n_neutral_prompts: int, per_prompt: int = 4, seed: int = 0) -> Demonstrations:
    """``n_prompts`` hate-prone and ``n_neutral_prompts`` neutral prompts from held-out statements,
    the groups taken in turn (seeded draws; a group needs ``per_prompt`` + 1 hateful and one
    neutral statement for a hate-prone prompt, ``per_prompt`` neutral ones for a neutral prompt)."""
    if per_prompt < 1 or n_prompts < 1 or n_neutral_prompts < 1:
        raise ValueError(f"per_prompt, n_prompts and n_neutral_prompts must be >= 1, got {per_prompt}, {n_prompts}, "
                         f"{n_neutral_prompts}")
    rng = random.Random(seed)
    hate_ok = sorted(g for g in hate_by_group if len(set(hate_by_group[g])) > per_prompt
                     and len(set(neutral_by_group.get(g, ()))) >= 1)
    neutral_ok = sorted(g for g in neutral_by_group if len(set(neutral_by_group[g])) >= per_prompt)
    if not hate_ok:
        raise ValueError(f"no target group has {per_prompt + 1} held-out hateful statements and a neutral one: "
                         "use fewer statements per prompt or more held-out data")
    if not neutral_ok:
        raise ValueError(f"no target group has {per_prompt} held-out neutral statements")
    hp, hg, hn, nn = [], [], [], []
    for i in range(n_prompts):
        g = hate_ok[i % len(hate_ok)]
        drawn = rng.sample(sorted(set(hate_by_group[g])), per_prompt + 1)
        hp.append(demonstration_prompt(drawn[:per_prompt]))
        hg.append(g)
        hn.append(drawn[-1])
        nn.append(rng.choice(sorted(set(neutral_by_group[g]))))
    np_, ng = [], []
    for i in range(n_neutral_prompts):
        g = neutral_ok[i % len(neutral_ok)]
        np_.append(demonstration_prompt(rng.sample(sorted(set(neutral_by_group[g])), per_prompt)))
        ng.append(g)
    return Demonstrations(tuple(hp), tuple(hg), tuple(hn), tuple(nn), tuple(np_), tuple(ng))
