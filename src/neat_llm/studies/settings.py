"""What ``neat hate`` and ``neat bias`` are asked to do, as typed values checked when made (so
nonsense fails before a model or a data set is loaded). The CLI builds them from its options; the
Python API takes them as they are or as keyword arguments (``hate_study(model, n_prompts=40)``).
How the neurons are found is find's own ``FindSettings``, kept apart."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..concepts.label_readout import LabelReadout
from ..evaluation.hate import HATE_READOUT
from ..interventions import check_choice, check_transport_at
from ..interventions.direction import check_direction_strength
from ..records import Changeable

DEFAULT_KS = (10, 50, 100, 500, 2000)


def _ks(ks, name: str = "--k") -> tuple[int, ...]:
    try:
        out = tuple(sorted({int(k) for k in ks}))
    except (TypeError, ValueError):
        raise ValueError(f"{name} takes whole numbers, got {ks!r}") from None
    if not out or out[0] < 1:
        raise ValueError(f"{name} needs positive sizes, got {list(out)}")
    return out


def _at_least(obj, lo: int, *names: str) -> None:
    for name in names:
        v = getattr(obj, name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < lo):
            raise ValueError(f"{name} must be a whole number >= {lo}, got {v!r}")


def _spans(v, name: str) -> tuple[tuple[int, int], ...]:
    """Spans of blocks (first, last), checked: whole numbers, first <= last, at least one."""
    try:
        out = tuple((int(a), int(b)) for a, b in v)
    except (TypeError, ValueError):
        raise ValueError(f"{name} takes spans of blocks (first, last), e.g. [(14, 29)]; got {v!r}") from None
    if not out or any(a < 0 or b < a for a, b in out):
        raise ValueError(f"{name} needs spans (first, last) with 0 <= first <= last, got {list(out)}")
    return tuple(sorted(set(out)))


def _names(v) -> tuple[str, ...] | None:
    return None if v is None else tuple([v] if isinstance(v, str) else v)


@dataclass(frozen=True)
class HateStudySettings(Changeable):
    """``hate_study``'s settings (see its docstring for each one's meaning)."""

    WHAT = "hate study setting"

    data: str = "toxigen"
    data_path: str | Path | None = None
    text_col: str = "text"
    label_col: str = "label"
    positive: tuple[str, ...] = ("hate",)
    contrast: tuple[str, ...] | None = None
    method: str = "neat"
    ks: tuple[int, ...] = DEFAULT_KS
    fit_groups: tuple[str, ...] | None = None
    eval_groups: tuple[str, ...] | None = None
    n_random: int = 3
    max_per_side: int | None = None
    max_eval: int | None = None
    n_prompts: int = 80
    samples: int = 5
    max_new_tokens: int = 20
    davidson_prompts: int = 0
    classifier_data: str | Path | None = None
    readout: LabelReadout = HATE_READOUT
    mode: str | None = None
    alpha: float | None = None
    strength: float | None = None
    judge: str = "minilm"
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "ks", _ks(self.ks))
        for name in ("positive", "contrast", "fit_groups", "eval_groups"):
            object.__setattr__(self, name, _names(getattr(self, name)))
        _at_least(self, 1, "n_random", "max_per_side", "max_eval", "n_prompts", "samples", "max_new_tokens")
        _at_least(self, 0, "davidson_prompts", "seed")
        if self.judge not in ("minilm", "tfidf"):
            raise ValueError(f"judge must be 'minilm' or 'tfidf', got {self.judge!r}")
        check_choice(self.mode, self.alpha, self.strength)



@dataclass(frozen=True)
class BiasStudySettings(Changeable):
    """``bias_study``'s settings (see its docstring for each one's meaning)."""

    WHAT = "bias study setting"

    data: str = "crows-pairs"
    data_path: str | Path | None = None
    lang: str = "en"
    bias_type: str | None = None
    columns: dict | None = None
    method: str = "neat"
    ks: tuple[int, ...] = DEFAULT_KS
    n_random: int = 3
    eval_fraction: float = 0.3
    max_fit_pairs: int | None = None
    max_eval_pairs: int | None = None
    n_boot: int = 1000
    min_pairs: int = 5
    mode: str | None = None
    alpha: float | None = None
    strength: float | None = None
    seed: int = 0
    layer_rule: str = "paired"
    templates: dict | None = None
    probe: str = "prototypical"
    folds: int | None = None
    share_conditions: bool = True  # conditions another study measured the same way taken from the cache (SharedConditions)
    writers: tuple[int, int] | None = None  # the K rows: the concept direction out of what the K neurons of blocks a..b that write most of it write (NeuronWrites), random K-sets of the span the control
    writes_strength: float = 1.0  # with writers: the share of each write along the direction removed (2: reversed)
    ceiling: bool = False  # the concept direction edited itself beside the K rows: at the reading layer, out of what every MLP (and the writers' span) writes
    writer_rank: str = "contrast"  # with writers: "contrast" (activation on stereotypical minus counterpart text x write along u) or "effect" (first-order effect of the edit on the fit pairs' preference)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ks", _ks(self.ks))
        _at_least(self, 1, "n_random", "max_fit_pairs", "max_eval_pairs", "n_boot", "min_pairs")
        _at_least(self, 2, "folds")
        _at_least(self, 0, "seed")
        if not 0.0 < self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must lie between 0 and 1, got {self.eval_fraction}")
        if self.layer_rule not in ("paired", "auroc"):
            raise ValueError(f"layer_rule must be 'paired' or 'auroc', got {self.layer_rule!r}")
        if self.probe not in ("prototypical", "paired"):
            raise ValueError(f"probe must be 'prototypical' or 'paired', got {self.probe!r}")
        check_choice(self.mode, self.alpha, self.strength)
        _check_writers(self)


WRITER_RANKS = ("contrast", "effect")  # how a study's writers are ranked (see BiasStudySettings.writer_rank)


def _check_writers(s) -> None:
    """A study's ``writers`` span (checked and stored as a pair) with no activation intervention
    beside it, and its ``writes_strength``."""
    if s.writers is not None:
        object.__setattr__(s, "writers", _spans([s.writers], "writers")[0])
        given = [n for n in ("mode", "alpha", "strength", "transport_at") if getattr(s, n, None) is not None]
        if given:
            raise ValueError(f"writers edits what the neurons write, not their activations: drop {', '.join(given)} "
                             "(writes_strength sets how much of the direction is removed)")
    check_direction_strength(s.writes_strength, "writes_strength")
    if s.writer_rank not in WRITER_RANKS:
        raise ValueError(f"writer_rank must be one of {', '.join(WRITER_RANKS)}, got {s.writer_rank!r}")


@dataclass(frozen=True)
class DemonstrationStudySettings(Changeable):
    """``demonstration_study``'s settings: the hate study with demonstration prompts (METHOD.md
    section 6; see its docstring for each one's meaning)."""

    WHAT = "demonstration study setting"

    data_path: str | Path | None = None
    method: str = "neat"
    ks: tuple[int, ...] | None = None  # None: K chosen on the fit split at each of BUDGET_KS_AT (perplexity ratios)
    fit_groups: tuple[str, ...] | None = None
    eval_groups: tuple[str, ...] | None = None
    n_random: int = 3
    n_prompts: int = 200
    samples: int = 5
    n_neutral_prompts: int = 50
    neutral_samples: int = 4
    per_prompt: int = 4
    max_new_tokens: int = 40
    max_neutral_rate: float = 0.10
    readout: str = "recognition"  # where S is read: after a statement, or where the model writes (demonstration prompts)
    n_readout_prompts: int = 150  # generation readout: fit demonstration prompts per side
    probe: str = "prototypical"  # or "paired": each probe a hateful text with a neutral one about the same group
    ceiling: bool = False  # also measure the concept direction removed at the reading layer (row "direction")
    ceiling_layers: tuple[int, ...] | None = None  # and at these blocks (rows "direction-L<block>"): where it writes
    ceiling_spans: tuple[tuple[int, int], ...] | None = None  # each block's own direction at every block a..b ("direction-La-b")
    ceiling_units: tuple[tuple[int, int], ...] | None = None  # every MLP unit of blocks a..b under the intervention ("units-La-b")
    ceiling_writers: tuple[tuple[int, int], ...] | None = None  # the run's direction removed from what the MLPs / attention of blocks a..b write ("mlp-writes-La-b", "attn-writes-La-b")
    ceiling_strength: float = 1.0  # the direction ceilings at this strength in (0, 2]: h - t (h . u) u
    writer_ks: tuple[int, ...] | None = None  # with ceiling_writers: the direction removed from what the K neurons of the span that write most of it write ("writes-K<K>-La-b"), beside random K-sets of the span
    mode: str | None = None
    alpha: float | None = None
    strength: float | None = None
    transport_at: str | None = None  # mode transport: the map fitted at each fit prompt's "last" token (or "all")
    share_conditions: bool = True  # conditions another study measured the same way taken from the cache (SharedConditions)
    seed: int = 0
    writers: tuple[int, int] | None = None  # the K rows: the concept direction out of what the K neurons of blocks a..b that write most of it write (NeuronWrites), random K-sets of the span the control
    writes_strength: float = 1.0  # with writers: the share of each write along the direction removed (2: reversed)
    writer_rank: str = "contrast"  # with writers: "contrast" (activation on concept minus contrast text x write along u) or "effect" (first-order effect of the edit on fit prompts' log p(hateful next) - log p(neutral next))

    @property
    def has_ceilings(self) -> bool:
        """Whether any ceiling row is asked for (the direction, per block, per span, units, writers)."""
        return bool(self.ceiling or self.ceiling_layers or self.ceiling_spans or self.ceiling_units
                    or self.ceiling_writers)

    def __post_init__(self) -> None:
        if self.ks is not None:
            object.__setattr__(self, "ks", _ks(self.ks))
        for name in ("fit_groups", "eval_groups"):
            object.__setattr__(self, name, _names(getattr(self, name)))
        _at_least(self, 1, "n_random", "n_prompts", "samples", "n_neutral_prompts", "neutral_samples", "per_prompt",
                  "max_new_tokens")
        _at_least(self, 0, "seed")
        if not 0.0 < self.max_neutral_rate < 1.0:
            raise ValueError(f"max_neutral_rate must lie between 0 and 1, got {self.max_neutral_rate}")
        if self.readout not in ("recognition", "generation"):
            raise ValueError(f"readout must be 'recognition' or 'generation', got {self.readout!r}")
        if self.probe not in ("prototypical", "paired"):
            raise ValueError(f"probe must be 'prototypical' or 'paired', got {self.probe!r}")
        if self.ceiling_layers is not None:
            layers = tuple(self.ceiling_layers)
            if not layers or any(isinstance(l, bool) or not isinstance(l, int) or l < 0 for l in layers):
                raise ValueError(f"ceiling_layers must be block numbers >= 0, got {self.ceiling_layers!r}")
            object.__setattr__(self, "ceiling_layers", tuple(sorted(set(layers))))
        for name in ("ceiling_spans", "ceiling_units", "ceiling_writers"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, _spans(getattr(self, name), name))
        check_direction_strength(self.ceiling_strength, "ceiling_strength")
        if self.writer_ks is not None:
            object.__setattr__(self, "writer_ks", _ks(self.writer_ks, "writer_ks"))
            if not self.ceiling_writers:
                raise ValueError("writer_ks needs ceiling_writers: the span of blocks whose neurons' writes are edited")
        _at_least(self, 2, "n_readout_prompts")
        check_choice(self.mode, self.alpha, self.strength)
        check_transport_at(self.mode, self.transport_at)
        _check_writers(self)
