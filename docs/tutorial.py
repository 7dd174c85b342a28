# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Concept neurons in ten minutes
#
# This notebook finds the neurons of a concept in a small language model, looks at them, turns
# them off, measures what that changes against random neurons, and exports the result. It runs on
# a laptop CPU with the model that ships with neat-llm (SmolLM2-135M-Instruct), nothing downloaded.
# Open it with `jupytext --to ipynb docs/tutorial.py` (or run it as a script); the test suite
# executes it, so it never goes stale.
#
# `BLOCKS` keeps the search to a few blocks so the notebook is quick; set it to `None` to score all
# 46,080 neurons (about 7 minutes on 2 CPU cores).

# %%
import os

import neat_llm

BLOCKS = os.environ.get("NEAT_TUTORIAL_BLOCKS", "18-21")  # None: the whole model
OUT = os.environ.get("NEAT_TUTORIAL_OUT", "tutorial-runs")

# %% [markdown]
# ## 1. The model and the concept
#
# A concept is a set of texts that express it (positives) and texts that do not (contrast). The
# built-in demo concept is hostile insults against friendly text of the same length.

# %%
model = neat_llm.load_model()  # or neat_llm.wrap(your_hf_model, your_tokenizer)
concept = neat_llm.demo_concept()
print(model.model_id, f"{model.n_layers} blocks x {model.d_ff} neurons")
print(concept.n_positive, "insults, e.g.", repr(concept.positives[0]))
print(concept.n_contrast, "friendly texts, e.g.", repr(concept.contrast[0]))

# %% [markdown]
# ## 2. Find the concept neurons
#
# NEAT builds a concept vector from the fit texts, reads the concept score S at one layer, and
# scores each neuron by how much turning it off lowers S on the most typical insults while leaving
# friendly text alone (minus a penalty for neurons whose removal hurts fluency everywhere).

# %%
run = neat_llm.find_concept_neurons(model, concept, layers=BLOCKS, reading_layer=21 if BLOCKS else None,
                                    out=f"{OUT}/insults", progress=False)
print(f"reading layer {run.meta.reading_layer}, held-out AUROC of S {run.meta.eval_auroc:.3f}, "
      f"{run.meta.n_neurons_scored:,} neurons scored")

# %% [markdown]
# ## 3. Look at the top neurons
#
# For each: its score, how much it moves S on the insults (ΔS_P) and on friendly text (ΔS_N), and
# the tokens that excite it most in the fit texts. A concept neuron moves the insults much more
# than the friendly text.

# %%
for row in run.rows(8):
    print(f"#{row.rank} block {row.layer} neuron {row.neuron}: score {row.score:.3f}, "
          f"ΔS_P {row.effect_positive:.3f}, ΔS_N {row.effect_contrast:.3f}, top tokens {row.top_tokens}")

# %% [markdown]
# ## 4. Turn them off and generate
#
# `turn_off` is a context manager: inside it the neurons are set to zero at every position
# (`mode="mean"` or `mode="dampen", alpha=0.3` are the other interventions); outside, the model is
# untouched.

# %%
prompt = "Honestly, you are"
print("as is:   ", model.generate(prompt, 20))
with neat_llm.turn_off(model, run.top(50)):
    print("50 off:  ", model.generate(prompt, 20))

# %% [markdown]
# What a turned-off neuron becomes is a type: `neat_llm.Zero()`, `Mean(means)`, `Dampen(alpha)` or
# `Transport(...)`. Transport (AcT) moves each neuron from where it sits on insults toward where it
# sits on friendly text instead of silencing it; `run.intervention("transport", strength=0.5)` makes
# the mean map from the run's own statistics (`neat_llm.fit_transport` fits a quantile-matched one).

# %%
transport = run.intervention("transport", strength=0.5)
print(transport.describe())
with neat_llm.turn_off(model, run.top(50), transport):
    print("50 moved:", model.generate(prompt, 20))

# %% [markdown]
# ## 5. Measure it against random neurons
#
# On the held-out texts: how much of the gap in S between insults and friendly text disappears
# (gap removal), next to random neuron sets of the same size, and what it costs in fluency (the
# perplexity ratio on neutral text). An effect only counts when it beats the random sets at a
# small fluency cost.

# %%
from neat_llm.evaluation import evaluate_removal

report = evaluate_removal(model, run.readout(), run.eval_set(concept), run.selections([10, 50]), n_random=2)
for r in report.rows:
    print(f"K={r.k}: gap removal {r.gap_removal:.3f} (random {r.random_gap_removal_mean:.3f} ± "
          f"{r.random_gap_removal_std:.3f}), perplexity ratio {r.ppl_ratio:.3f} (random {r.random_ppl_ratio_mean:.3f})")

# %% [markdown]
# ## 6. Take the neurons elsewhere
#
# An intervention file travels without the run: another script (or `neat generate --spec`) applies
# it to the same model, and refuses a model with other weights. `neat export --format hf` writes
# the edited model as a plain Hugging Face checkpoint instead.

# %%
from neat_llm.export import spec_from_run

spec = spec_from_run(run, 50)
path = spec.save(f"{OUT}/insults-50.json")
with neat_llm.turn_off(model, path):
    print("from the file:", model.generate(prompt, 20))
print(spec.neurons[0])

# %% [markdown]
# ## 7. In nnsight, pyvene and TransformerLens
#
# With `pip install "neat-llm[interop]"` the same file goes into the tools you already use, on the
# same Hugging Face model (each checks the file against it first): a call inside an nnsight trace,
# a pyvene `IntervenableModel` (saved and loaded with pyvene's own `save` / `load`), or
# TransformerLens `fwd_hooks` at `blocks.{l}.mlp.hook_post`. Each gives the logits `turn_off` gives.

# %%
import nnsight
import torch

from neat_llm.interop import edits_for, fwd_hooks, intervenable_model, turn_off_in_trace

enc = model.encode([prompt])
with torch.inference_mode():
    with neat_llm.turn_off(model, path):
        want = model.hf(**enc, use_cache=False).logits
    lm = nnsight.TransformersModel(model.hf, tokenizer=model.tokenizer, task="text-generation")
    edits = edits_for(lm, path)  # checked against the model once, outside the trace
    with lm.trace(dict(enc)):
        turn_off_in_trace(lm, edits)
        got = lm.output.logits.save()
    print("nnsight: largest logit difference from turn_off", f"{(got - want).abs().max().item():.1e}")
    pv_model = intervenable_model(path, model.hf)
    _, out = pv_model(dict(enc), unit_locations=None)
    print("pyvene:  largest logit difference from turn_off", f"{(out.logits - want).abs().max().item():.1e}")
    pv_model.save(f"{OUT}/insults-50-pyvene")

# %% [markdown]
# TransformerLens rewires the Hugging Face model it boots in place, so it comes last (check the
# weights before booting: the bridge renames them).

# %%
from transformer_lens.model_bridge import TransformerBridge

from neat_llm.interop import check_hf_model

check_hf_model(spec, model.hf)
bridge = TransformerBridge.boot_transformers(model.model_id, hf_model=model.hf, tokenizer=model.tokenizer,
                                             device=str(model.device))
with torch.inference_mode():
    tl_logits = bridge.run_with_hooks(enc["input_ids"], attention_mask=enc["attention_mask"],
                                      fwd_hooks=fwd_hooks(path, bridge))
print("TransformerLens: largest logit difference from turn_off", f"{(tl_logits - want).abs().max().item():.1e}")
