"""How ``find_concept_neurons`` works, as one typed value: ``FindSettings`` (checked when made, so
nonsense fails at the boundary, before a model is loaded), and ``build_scorer``, which turns a
method name, the settings and the scorer's own options into a scorer with find's defaults.

The CLI builds both from its shared option groups; the Python API takes them as they are or as
keyword arguments (``find_concept_neurons(model, concept, probe_size=4)``)."""

from __future__ import annotations

from dataclasses import dataclass

from .concepts.label_readout import LabelReadout
from .concepts.vectors import DEFAULT_READ_TEMPLATE, check_template
from .records import Changeable
from .scoring import SCORERS, Scorer, get_scorer
from .scoring.effects import SCORE_RULES

DEFAULT_PROBE_SIZE = 8
DEFAULT_SCORE = "specific"
DEFAULT_POSITIONS = "read"
# `neat find`'s default proven top K (the specific score, without max_ppl): the largest size the
# studies and `neat evaluate` turn off; below it a run holds upper bounds
DEFAULT_EXACT_TOP = 2000


def _methods(capability: str) -> tuple[str, ...]:
    """The methods whose scorer class has ``capability`` (what a method can do lives on its class)."""
    return tuple(name for name, cls in SCORERS.items() if getattr(cls, capability))


PROBE_METHODS = _methods("probe_based")  # methods that score a probe batch
# methods that turn neurons off exactly at a choice of positions (neat-cluster and screen-verify for the
# neurons they score exactly: the same positions as neat, so their scores and the contrast side agree)
POSITION_METHODS = _methods("takes_positions")
EFFECT_METHODS = _methods("scores_an_effect")  # a drop of S: the specificity-aware score applies
TOKEN_BUDGET_METHODS = _methods("takes_token_budget")  # take tokens_per_batch
LABEL_METHODS = _methods("reads_label")  # read the label readout
POOL_METHODS = _methods("pools_activations")  # score a neuron's own activation, pooled over a text (activation_pool)
ACTIVATION_POOLS = ("mean", "last", "max")


@dataclass(frozen=True)
class FindSettings(Changeable):
    """The settings of one run of ``find_concept_neurons`` (see its docstring for each one's meaning;
    the defaults are the held-out grid's choices, docs/results.md).

    ``score`` None: "specific" for the probe-based methods, "positive" for the others;
    ``positions`` None: "read" for the methods that have positions ("all" for exhaustive);
    ``specificity`` None: 10 for the methods that score a drop of S, 0 for the others;
    ``layers``: blocks to score, a list or a string such as "0-5,7,20-" (parsed against the model);
    ``activation_pool``: for the methods that score a neuron's own activation (activation, auroc,
    aura), where it is read: its mean over the text's tokens, its value at the last token (where a
    model reads a prompt's end and writes next) or its maximum; None: the method's own (aura: max,
    the others: mean). ``pool`` is the concept representation's, a different thing."""

    reading_layer: int | None = None
    vector: str = "diff-means"
    pool: str = "last"
    read_template: str = DEFAULT_READ_TEMPLATE
    probe_size: int = DEFAULT_PROBE_SIZE
    score: str | None = None
    contrastive: bool = False
    positions: str | None = None
    specificity: float | None = None
    layers: tuple[int, ...] | str | None = None
    ablation: str = "zero"
    eval_fraction: float = 0.3
    seed: int = 0
    top_k: int = 100
    strict: bool = False
    batch_size: int = 16
    tokens_per_batch: int = 4096
    max_ppl: float | None = None
    activation_pool: str | None = None  # activation, auroc, aura: "mean", "last" or "max" (None: the method's own)
    exact_top: int | None = None  # the specific score: sweep the contrast probes only where the top K can change
    WHAT = "find setting"  # class attribute (no annotation): not a field

    def __post_init__(self) -> None:
        def whole(name: str, lo: int) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be a whole number >= {lo}, got {v!r}")

        whole("probe_size", 1)
        whole("top_k", 1)
        whole("batch_size", 1)
        whole("tokens_per_batch", 1)
        whole("seed", 0)
        if isinstance(self.layers, list):
            object.__setattr__(self, "layers", tuple(self.layers))
        check_template(self.read_template)
        if self.pool not in ("last", "mean"):
            raise ValueError(f"pool must be 'last' or 'mean', got {self.pool!r}")
        if self.activation_pool is not None and self.activation_pool not in ACTIVATION_POOLS:
            raise ValueError(f"activation_pool must be one of {', '.join(ACTIVATION_POOLS)}, got {self.activation_pool!r}")
        if self.ablation not in ("zero", "mean"):
            raise ValueError(f"ablation must be 'zero' or 'mean', got {self.ablation!r}")
        if not 0.0 < self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must lie between 0 and 1, got {self.eval_fraction}")
        if self.reading_layer is not None and self.reading_layer < 0:
            raise ValueError(f"reading layer must be >= 0, got {self.reading_layer}")
        if self.contrastive and self.score not in (None, "contrastive"):
            raise ValueError(f"contrastive=True is score='contrastive', not {self.score!r}")
        if self.score is not None and self.score not in SCORE_RULES:
            raise ValueError(f"score must be one of {', '.join(SCORE_RULES)}, got {self.score!r}")
        if self.positions is not None and self.positions not in ("all", "read"):
            raise ValueError(f"positions must be 'all' or 'read', got {self.positions!r}")
        if self.specificity is not None and not self.specificity >= 0:
            raise ValueError(f"specificity must be >= 0, got {self.specificity}")
        if self.max_ppl is not None and not self.max_ppl > 1.0:
            raise ValueError(f"max_ppl is a perplexity ratio and must be > 1, got {self.max_ppl}")
        if self.exact_top is not None:
            whole("exact_top", 1)
            if self.exact_top < self.top_k:
                raise ValueError(f"exact_top ({self.exact_top}) proves the top {self.exact_top} only, but top.csv lists "
                                 f"the top_k = {self.top_k}: give exact_top >= top_k")
            if self.max_ppl is not None:
                raise ValueError("max_ppl chooses K among every size, which needs the whole ranking: not with exact_top")

    def rule(self, method: str) -> str:
        """The score rule for ``method``."""
        if self.contrastive:
            return "contrastive"
        return (DEFAULT_SCORE if method in PROBE_METHODS else "positive") if self.score is None else self.score

    def check_for(self, method: str) -> None:
        """The checks that need the method: a setting it has no use for is an error."""
        if method not in SCORERS:
            raise ValueError(f"unknown method {method!r}; available: {', '.join(SCORERS)}")
        rule = self.rule(method)
        if rule != "positive" and method not in PROBE_METHODS:
            raise ValueError(f"score {rule!r} needs contrast probes, which the {method!r} method does not use "
                             f"(probe-based methods: {', '.join(PROBE_METHODS)})")
        if self.exact_top is not None and rule != "specific":
            raise ValueError(f"exact_top prunes the contrast sweep of the specific score; score {rule!r} has none")
        if self.positions is not None and method not in POSITION_METHODS:
            raise ValueError(f"positions is an option of the {', '.join(POSITION_METHODS)} methods, not of {method!r}")
        if self.activation_pool is not None and method not in POOL_METHODS:
            raise ValueError(f"activation_pool is an option of the methods that score a neuron's own activation "
                             f"({', '.join(POOL_METHODS)}), not of {method!r}")
        if self.specificity is not None and self.specificity > 0 and method not in EFFECT_METHODS:
            raise ValueError(f"specificity applies to methods that score a drop of the concept score "
                             f"({', '.join(EFFECT_METHODS)}), not to {method!r}")

    def specificity_for(self, method: str) -> float:
        from .scoring.fluency import DEFAULT_SPECIFICITY

        if self.specificity is not None:
            return float(self.specificity)
        return DEFAULT_SPECIFICITY if method in EFFECT_METHODS else 0.0

    def positions_for(self, method: str) -> str:
        """Where ``method`` turns a neuron off (exhaustive: every position unless asked, its plain definition)."""
        return self.positions or (DEFAULT_POSITIONS if method != "exhaustive" else "all")


def build_scorer(method: str, settings: FindSettings | None = None, label: LabelReadout | None = None,
                 concept_name: str | None = None, **options) -> Scorer:
    """The scorer of ``method`` with find's defaults from ``settings`` (positions, the token budget,
    the label readout) and its own constructor ``options`` (e.g. ``n_clusters=32`` for neat-cluster,
    ``max_texts=8`` for integrated-gradients). The label readout's words are checked when a model
    scores with it."""
    settings = settings or FindSettings()
    settings.check_for(method)
    if method in POSITION_METHODS:
        options.setdefault("positions", settings.positions_for(method))
    if method in TOKEN_BUDGET_METHODS:
        options.setdefault("tokens_per_batch", settings.tokens_per_batch)
    if method in POOL_METHODS and settings.activation_pool is not None:
        options.setdefault("pool", settings.activation_pool)
    if method in LABEL_METHODS:
        options.setdefault("label", label or (LabelReadout(concept=concept_name) if concept_name else LabelReadout()))
    try:
        return get_scorer(method, **options)
    except TypeError as err:
        raise ValueError(f"{method}: {err}") from None
