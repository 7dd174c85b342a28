"""Every baseline scorer against a direct computation on a tiny model."""

import pytest
import torch
from sklearn.metrics import roc_auc_score

from conftest import concept_texts
from neat_llm.concepts.vectors import ConceptReadout
from neat_llm.hooks import capture_inputs, edit_inputs
from neat_llm.scoring import (ActivationScorer, AttributionPatchingScorer, AurocScorer, ExhaustiveScorer, NeatScorer,
                              ProbeSet, RandomScorer, ReferenceScorer, ScoringTask, ScreenVerifyScorer, get_scorer)
from neat_llm.scoring.reference import concept_score_of


@pytest.fixture
def setup(tiny_llama):
    pos, neg = concept_texts(6)
    torch.manual_seed(3)
    readout = ConceptReadout(1, torch.nn.functional.normalize(torch.randn(tiny_llama.d_model), dim=0))

    def task(**kw):
        base = dict(readout=readout, probes=ProbeSet([pos[0]], [1.0]), layers=[0, 1, 2], positives=pos, contrast=neg)
        return ScoringTask(**{**base, **kw})

    return tiny_llama, pos, neg, readout, task


def _pooled(model, text, layer):
    """Mean activation of every neuron of ``layer`` over the tokens of ``text``, one text alone."""
    enc = model.encode([text])
    with torch.inference_mode(), capture_inputs({0: model.sites[layer]}) as acts:
        model.hf(**enc)
    return acts[0][0][0].mean(0)  # [d_ff]


def test_random_is_seeded_and_free(setup):
    m, *_, task = setup
    a = RandomScorer().score(m, task(seed=1))
    b = RandomScorer().score(m, task(seed=1))
    c = RandomScorer().score(m, task(seed=2))
    assert torch.equal(a.scores, b.scores) and not torch.equal(a.scores, c.scores)
    assert a.passes.forward == 0 and a.passes.partial_forward == 0 and a.n_scored == 3 * m.d_ff


def test_activation_contrast_equals_direct_means(setup):
    m, pos, neg, _, task = setup
    got = ActivationScorer().score(m, task())
    for l in range(3):
        want = torch.stack([_pooled(m, t, l) for t in pos]).mean(0) - torch.stack([_pooled(m, t, l) for t in neg]).mean(0)
        torch.testing.assert_close(got.scores[l], want, atol=1e-5, rtol=1e-4)
    assert got.passes.forward == len(pos) + len(neg)


def test_auroc_equals_sklearn(setup):
    m, pos, neg, _, task = setup
    got = AurocScorer().score(m, task(layers=[2]))
    a_p = torch.stack([_pooled(m, t, 2) for t in pos])
    a_n = torch.stack([_pooled(m, t, 2) for t in neg])
    y = [1] * len(pos) + [0] * len(neg)
    for k in range(0, m.d_ff, 7):
        want = roc_auc_score(y, torch.cat([a_p[:, k], a_n[:, k]]).numpy())
        assert got.scores[2, k].item() == pytest.approx(want, abs=1e-6)
    assert torch.isnan(got.scores[0]).all()



def test_auroc_by_sorting_equals_every_pair_compared_with_ties_and_chunks():
    from neat_llm.scoring.simple import auroc_columns, auroc_pairwise

    g = torch.Generator().manual_seed(0)
    pos = torch.randint(0, 5, (37, 3, 11), generator=g).float()  # many ties
    neg = torch.randint(0, 5, (23, 3, 11), generator=g).float()
    want = auroc_pairwise(pos, neg)
    for chunk in (1, 4, 33, 4096):
        torch.testing.assert_close(auroc_columns(pos, neg, chunk), want, atol=1e-7, rtol=0)
    cont_p, cont_n = torch.randn(50, 40, generator=g) + 0.5, torch.randn(60, 40, generator=g)
    torch.testing.assert_close(auroc_columns(cont_p, cont_n), auroc_pairwise(cont_p, cont_n), atol=1e-7, rtol=0)
    assert auroc_columns(torch.ones(3, 2), torch.zeros(4, 2)).tolist() == [1.0, 1.0]

def _finite_difference(m, texts, readout, l, k, pool="last", eps=1e-2):
    """d/de S(a(1+e)) at e = 0 for neuron (l, k), averaged over ``texts``: sum_t a_t dS/da_t, by
    central differences (error O(eps^2); float32 round-off ~1e-7 / eps)."""
    fd = 0.0
    for t in texts:
        vals = []
        for sign in (1, -1):
            def scale(_key, x, s=sign):
                x = x.clone()
                x[..., k] *= 1 + s * eps
                return x
            with edit_inputs({l: m.sites[l]}, scale):
                vals.append(concept_score_of(m, t, readout.layer, readout.vector, pool=pool))
        fd += (vals[0] - vals[1]) / (2 * eps)
    return fd / len(texts)


def test_attribution_patching_matches_finite_differences(setup):
    m, pos, _, readout, task = setup
    got = AttributionPatchingScorer(batch_size=4).score(m, task())
    assert got.passes.backward == len(pos) and got.passes.forward == len(pos)
    checked = []
    flat = got.scores[:2].abs().flatten()
    picks = torch.topk(flat, 3).indices.tolist() + [5, m.d_ff + 30]
    for l, k in [(i // m.d_ff, i % m.d_ff) for i in picks]:
        fd = _finite_difference(m, pos, readout, l, k)
        assert got.scores[l, k].item() == pytest.approx(fd, rel=2e-2, abs=1e-4)
        checked.append(abs(fd))
    assert max(checked) > 1e-2, "finite differences too small to test anything"
    assert torch.all(got.scores[2] == 0)


def test_exhaustive_equals_reference_over_all_fit_positives(setup):
    m, pos, _, readout, task = setup
    subset = {0: [1, 7, 22], 1: [0, 47]}
    got = ExhaustiveScorer().score(m, task(layers=[0, 1], neurons=subset))
    ref = ReferenceScorer().score(m, task(layers=[0, 1], neurons=subset,
                                          probes=ProbeSet(list(pos), [1 / len(pos)] * len(pos))))
    ok = torch.isfinite(ref.scores)
    assert torch.equal(ok, torch.isfinite(got.scores)) and int(ok.sum()) == 5
    torch.testing.assert_close(got.scores[ok], ref.scores[ok], atol=1e-5, rtol=1e-4)
    assert got.passes.partial_forward == 5 * len(pos)  # n * m


def test_screen_verify_scores_top_candidates_exactly(setup):
    m, pos, _, readout, task = setup
    R = 10
    got = ScreenVerifyScorer(candidates=R, positions="all").score(m, task())
    attr = AttributionPatchingScorer().score(m, task()).scores
    neat = NeatScorer().score(m, task()).scores
    assert torch.all(got.scores[2] == 0), "blocks after the reading layer are exactly 0 and take no slot"
    verified = torch.isfinite(got.scores[:2])
    assert int(verified.sum()) == R
    top_attr = set(torch.topk(attr[:2].flatten(), R).indices.tolist())
    assert set(torch.nonzero(verified.flatten()).flatten().tolist()) == top_attr
    torch.testing.assert_close(got.scores[:2][verified], neat[:2][verified], atol=1e-5, rtol=1e-4)
    assert got.passes.partial_forward == R and got.passes.backward == len(pos)


def test_screen_verify_on_the_probe_batch(setup):
    """screen_on="probes": the screen is a·dS/da on X* (weighted), b backward passes."""
    from neat_llm.scoring.attribution import gradient_x_activation

    m, pos, neg, readout, task = setup
    R = 12
    probes = ProbeSet([pos[0], neg[0]], [1.0, -1.0])
    got = ScreenVerifyScorer(candidates=R, screen_on="probes", positions="all").score(m, task(probes=probes))
    est = (gradient_x_activation(m, [pos[0]], 1, readout.vector) - gradient_x_activation(m, [neg[0]], 1, readout.vector))
    verified = torch.isfinite(got.scores[:2])
    assert set(torch.nonzero(verified.flatten()).flatten().tolist()) == set(torch.topk(est.flatten(), R).indices.tolist())
    neat = NeatScorer().score(m, task(probes=probes)).scores
    torch.testing.assert_close(got.scores[:2][verified], neat[:2][verified], atol=1e-5, rtol=1e-4)
    assert got.passes.backward == 2
    with pytest.raises(ValueError, match="screen_on"):
        ScreenVerifyScorer(screen_on="all")


def test_scorers_need_fit_texts(setup):
    m, _, _, readout, _ = setup
    bare = ScoringTask(readout, ProbeSet(["the rain"], [1.0]), layers=[0])
    for name in ("activation", "auroc", "attribution-patching", "exhaustive", "screen-verify"):
        with pytest.raises(ValueError, match="needs the fit texts"):
            get_scorer(name).score(m, bare)


def test_attribution_patching_reads_a_mean_pooled_score(setup):
    """With ``pool="mean"`` the first-order estimate is of S averaged over the tokens."""
    m, pos, _, readout, task = setup
    mean_readout = ConceptReadout(readout.layer, readout.vector, pool="mean")
    got = AttributionPatchingScorer(batch_size=3).score(m, task(readout=mean_readout))
    flat = got.scores[:2].abs().flatten()
    for i in torch.topk(flat, 2).indices.tolist():
        l, k = i // m.d_ff, i % m.d_ff
        fd = _finite_difference(m, pos, readout, l, k, pool="mean")
        assert got.scores[l, k].item() == pytest.approx(fd, rel=2e-2, abs=1e-4)


def test_the_activation_pool_reads_each_neuron_where_it_is_asked(setup):
    """``FindSettings(activation_pool="last")`` builds activation and auroc scorers that read each
    neuron at the text's last token (a prompt's end, where the model writes next), checked against a
    direct read; the other methods refuse it."""
    from neat_llm.find_settings import FindSettings, build_scorer

    m, pos, neg, _, task = setup
    scorer = build_scorer("activation", FindSettings(activation_pool="last"))
    assert scorer.pool == "last" and scorer.params()["pool"] == "last"
    got = scorer.score(m, task(layers=[1]))

    def last(text):
        enc = m.encode([text])
        with torch.inference_mode(), capture_inputs({0: m.sites[1]}) as acts:
            m.hf(**enc)
        return acts[0][0][0][-1]

    want = torch.stack([last(t) for t in pos]).mean(0) - torch.stack([last(t) for t in neg]).mean(0)
    torch.testing.assert_close(got.scores[1], want, atol=1e-5, rtol=1e-4)
    assert build_scorer("auroc", FindSettings(activation_pool="max")).pool == "max"
    assert build_scorer("aura", FindSettings()).pool == "max" and build_scorer("auroc", FindSettings()).pool == "mean"
    with pytest.raises(ValueError, match="activation_pool is an option"):
        build_scorer("neat", FindSettings(activation_pool="last"))
    with pytest.raises(ValueError, match="activation_pool must be one of"):
        FindSettings(activation_pool="first")
