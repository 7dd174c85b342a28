"""The run report: examples.json against a direct reading of the neurons, the HTML page (sections,
escaping, no network), tolerance of old or partial run folders, the CLI, and the page in headless
Chromium (console errors, charts, table, screenshot)."""

import json
import re
import shutil
import warnings
from html.parser import HTMLParser

import pytest
import torch
from typer.testing import CliRunner

import neat_llm as nl

from conftest import concept_texts
from neat_llm.hooks import capture_inputs
from neat_llm.report import read_run_folder, render_report, write_report
from neat_llm.report.browser import check_page, find_chromium

EVIL = "<script>console.error('pwned')</script>"
EVIL_IMG = '"><img src=x onerror="console.error(1)"> & </details></section>'

BIAS = {"dataset": "crows-pairs", "lang": "en", "method": "neat", "extra_key": {"ignored": True},
        "settings": {"reading_layer": 2, "layer_rule": "paired", "eval_paired_accuracy": 0.612},
        "results": [
            {"bias_type": "race-color", "k": 50, "n": 120, "before": {"score": 61.5, "lo": 55.0, "hi": 67.9},
             "after": {"score": 55.2, "lo": 48.8, "hi": 61.0}, "random": {"score": 60.9, "lo": 54.1, "hi": 66.3},
             "ppl_ratio": 1.02},
            {"bias_type": "gender <b>", "k": 50, "n": 80, "before": {"score": 57.0, "lo": 49.0, "hi": 64.0},
             "after": {"score": 51.0, "lo": 43.0, "hi": 59.0}, "random": {"score": 56.0, "lo": 48.0, "hi": 63.0},
             "ppl_ratio": 1.01}]}
HATE = {"dataset": "toxigen", "method": "neat", "results": [
    {"k": 0, "condition": "before", "loglik_hate": -3.1, "loglik_neutral": -3.6, "gap": 0.5,
     "readout_accuracy": 0.81, "hate_rate": 0.30, "ppl_ratio": 1.0},
    *[{"k": k, "condition": c, "loglik_hate": -3.1 - g, "loglik_neutral": -3.6, "gap": 0.5 - g,
       "readout_accuracy": 0.81 - g / 2, "hate_rate": 0.3 - g / 3, "ppl_ratio": 1 + g / 10, "new_field": 1}
      for k in (10, 50, 100) for c, g in (("concept", k / 400), ("random", k / 4000))]]}


class Tags(HTMLParser):
    """Every start tag with its attributes, and the page's text."""

    def __init__(self):
        super().__init__()
        self.tags, self.text = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parse(html: str) -> Tags:
    p = Tags()
    p.feed(html)
    return p


@pytest.fixture(scope="module")
def run_dir(tiny_llama, tmp_path_factory):
    """A tiny-model run with an evaluation and hand-written hate/bias results beside it."""
    from neat_llm.evaluation import evaluate_removal

    pos, neg = concept_texts(24)
    cs = nl.ConceptSet.from_texts(pos, neg, name="weather")
    d = tmp_path_factory.mktemp("report") / "run"
    run = nl.find_concept_neurons(tiny_llama, cs, out=d, progress=False, top_k=80)
    rep = evaluate_removal(tiny_llama, run.readout(), run.eval_set(cs), run.selections([2, 8, 32]),
                           n_random=2)
    (d / "evaluation.json").write_text(json.dumps({"run_dir": str(d), "method": "neat", **rep.to_dict()}))
    (d / "hate.json").write_text(json.dumps(HATE))
    (d / "bias.json").write_text(json.dumps(BIAS))
    return d


@pytest.fixture(scope="module")
def evil_run_dir(tiny_llama, tmp_path_factory):
    """A run whose concept name, texts and model id carry HTML and script."""
    pos, neg = concept_texts(16)
    cs = nl.ConceptSet.from_texts([f"{EVIL} {t}" if i % 2 else f"{EVIL_IMG} {t}" for i, t in enumerate(pos)], neg,
                                  name=f"weather {EVIL}")
    d = tmp_path_factory.mktemp("evil") / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # some texts run past the tiny model's 64-token context: truncated
        nl.find_concept_neurons(tiny_llama, cs, out=d, progress=False, top_k=20)
    meta = json.loads((d / "meta.json").read_text())
    meta["model_id"] = f"tiny {EVIL_IMG}"
    (d / "meta.json").write_text(json.dumps(meta))
    return d


def test_examples_match_a_direct_reading_of_each_neuron(run_dir, tiny_llama):
    """Every stored token activation equals the neuron read directly on that text, and each
    example's maximum is the activation find's statistics recorded."""
    run = nl.Run.load(run_dir)
    ex = json.loads((run_dir / "examples.json").read_text())
    assert [(n["layer"], n["neuron"]) for n in ex["neurons"]] == list(run.top(50).neurons)
    pos, neg = concept_texts(24)
    split = nl.ConceptSet.from_texts(pos, neg, name="weather").split(eval_fraction=0.3, seed=0).fit
    readout = run.readout()  # the examples are the texts as the concept readout reads them
    texts = {"positive": readout.apply(split.positives), "contrast": readout.apply(split.contrast)}
    for n in ex["neurons"][:12]:
        l, k = n["layer"], n["neuron"]
        maxima = [x["max"] for x in n["examples"]]
        assert maxima == sorted(maxima, reverse=True) and len(n["examples"]) == 4
        assert len({texts[x["side"]][x["text_index"]] for x in n["examples"]}) == 4  # distinct texts
        for x in n["examples"]:
            text = texts[x["side"]][x["text_index"]]
            enc = tiny_llama.encode([text])
            with capture_inputs({0: tiny_llama.sites[l]}) as got, torch.inference_mode():
                tiny_llama.hf(**enc, use_cache=False)
            direct = got[0][0][0, :, k].float()
            a = x["offset"]
            assert x["acts"] == pytest.approx(direct[a:a + len(x["acts"])].tolist(), abs=1e-4)
            assert x["acts"][x["max_pos"] - a] == pytest.approx(x["max"], abs=1e-4)
            assert float(direct.max()) == pytest.approx(x["max"], abs=1e-4)
            assert "".join(x["tokens"]) == text  # the whole (short) text, token by token
        acts = []  # the neuron over every token of every fit positive, read directly
        for text in texts["positive"]:
            with capture_inputs({0: tiny_llama.sites[l]}) as got, torch.inference_mode():
                tiny_llama.hf(**tiny_llama.encode([text]), use_cache=False)
            acts.append(got[0][0][0, :, k].float())
        assert n["mean_positive"] == pytest.approx(float(torch.cat(acts).mean()), abs=1e-4)
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["passes"]["examples"]["forward"] > 0 and meta["seconds"]["examples"] > 0


def test_examples_are_distinct_texts_when_the_data_repeats_a_text(tiny_llama, tmp_path):
    """A text listed twice (on one side or on both) is shown once per neuron."""
    pos, neg = concept_texts(12)
    neg = neg + [pos[0], pos[0], neg[0]]  # repeats within and across sides
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # find warns about the repeats
        nl.find_concept_neurons(tiny_llama, nl.ConceptSet.from_texts(pos + [pos[0]], neg, name="rep"),
                                 out=tmp_path / "run", progress=False, top_k=30, eval_fraction=0.2)
    ex = json.loads((tmp_path / "run" / "examples.json").read_text())
    for n in ex["neurons"]:
        shown = ["".join(x["tokens"]) for x in n["examples"]]
        assert len(shown) == len(set(shown)) > 0, (n["layer"], n["neuron"], shown)


def test_report_has_every_section(run_dir):
    html = render_report(run_dir)
    page = parse(html)
    classes = [a.get("class", "") for t, a in page.tags if t == "svg"]
    for c in ("auroc", "per-block", "scores", "dose-response", "auroc-after", "ppl", "hate-gap",
              "hate-readout_accuracy", "hate-hate_rate", "hate-ppl_ratio", "bias"):
        assert any(c in cls.split() for cls in classes), c
    rows = [a for t, a in page.tags if t == "details" and "nrow" in a.get("class", "")]
    assert len(rows) == 50  # the neurons with stored examples; the rest of top.csv sits in one "more" block
    text = "".join(page.text)
    assert "weather" in text and "tiny-llama" in text and "crows-pairs" in text and "toxigen" in text
    assert "gender <b>" in text  # shown as text, not as markup
    assert "held-out paired accuracy 0.612" in text and "(paired rule)" in text
    tokens = [a for t, a in page.tags if t == "span" and a.get("class") == "t"]
    assert len(tokens) > 100 and all(a["style"].startswith("background:rgba(") for a in tokens)
    import pandas as pd

    first = pd.read_csv(run_dir / "top.csv").iloc[0]  # each row shows how often its neuron stays in the top 100
    assert "stays" in text and f"<span>{first.stability:.2f}</span>" in html


def test_no_url_the_browser_would_fetch(run_dir):
    html = render_report(run_dir)
    page = parse(html)
    assert not [t for t, _ in page.tags if t in ("script", "link", "iframe", "object", "embed")]
    for t, attrs in page.tags:
        for name in ("src", "href", "srcset", "action", "data"):
            v = attrs.get(name)
            assert v is None or v.startswith("data:") or v.startswith("#"), (t, name, v)
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", html)
    assert not re.search(r"@import", html)
    csp = [a["content"] for t, a in page.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in csp[0]


def test_dataset_and_model_strings_are_escaped(evil_run_dir):
    html = render_report(evil_run_dir)
    page = parse(html)
    assert not [t for t, _ in page.tags if t in ("script", "img")]
    assert not [(t, k) for t, a in page.tags for k in a if k.startswith("on")]
    text = "".join(page.text)
    assert EVIL in text  # the concept name, shown literally
    assert EVIL_IMG.strip() in text or "onerror" in text  # the model id / texts, shown literally
    assert "<script>" not in html and "&lt;script&gt;" in html
    # the sections after the evil strings are still there: nothing was closed early
    assert html.count("<section") == html.count("</section>") >= 4
    assert html.count("<details") == html.count("</details>")


def test_old_or_partial_run_folders_still_render(run_dir, tmp_path):
    d = tmp_path / "old"
    shutil.copytree(run_dir, d)
    for name in ("examples.json", "evaluation.json", "hate.json"):
        (d / name).unlink()
    (d / "bias.json").write_text(json.dumps({"results": [{"bias_type": "age"}, "junk"], "unknown": 1}))
    html = render_report(d)
    assert "no examples.json" in html and "Top neurons" in html
    # read through the typed reader: the row that cannot be a BiasRow is named in the note
    assert "bias.json could not be read (a bias row (age, K = ?) has no &#x27;before&#x27; score)" in html
    (d / "scores.safetensors").write_bytes(b"not a safetensors file")
    (d / "bias.json").write_text("{broken")
    html = render_report(d)
    assert "scores.safetensors could not be read" in html and "bias.json could not be read" in html
    assert "No per-layer AUROC" in html
    with pytest.raises(nl.RunError, match="meta.json"):
        read_run_folder(tmp_path)  # a folder that is no run


def test_cli_find_writes_the_report_and_report_rewrites_it(tiny_model_dir, tmp_path, monkeypatch):
    import pandas as pd

    from neat_llm.cli import app

    runner = CliRunner()
    pos, neg = concept_texts(12)
    csv = tmp_path / "c.csv"
    pd.DataFrame({"text": pos + neg, "label": ["w"] * len(pos) + ["f"] * len(neg)}).to_csv(csv, index=False)
    args = ["find", "--model", str(tiny_model_dir), "--concept", str(csv), "--positive", "w"]
    r = runner.invoke(app, [*args, "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    assert f"report: {tmp_path / 'run' / 'report.html'}" in r.stdout.replace("\n", "")
    assert "<svg" in (tmp_path / "run" / "report.html").read_text()
    r = runner.invoke(app, [*args, "--out", str(tmp_path / "run2"), "--json"])
    assert json.loads(r.stdout.strip().splitlines()[-1])["report"] == str(tmp_path / "run2" / "report.html")
    r = runner.invoke(app, ["report", str(tmp_path / "run"), "--out", str(tmp_path / "r.html")])
    assert r.exit_code == 0 and (tmp_path / "r.html").read_text().startswith("<!doctype html>")
    r = runner.invoke(app, ["report", str(tmp_path / "nothing")])
    assert r.exit_code == 2 and "no such run folder" in r.output

    def broken(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr("neat_llm.report.write_report", broken)
    r = runner.invoke(app, [*args, "--out", str(tmp_path / "run3")])
    assert r.exit_code == 0 and "disk on fire" in r.output
    assert nl.Run.load(tmp_path / "run3").meta.method == "neat"  # the run is kept
    assert not (tmp_path / "run3" / "report.html").exists()


needs_chromium = pytest.mark.skipif(find_chromium() is None,
                                    reason="chromium not installed (apt-get install chromium; .ci/run installs it)")

PAGE_QUERIES = {
    "charts": "document.querySelectorAll('svg.chart').length",
    "chart_marks": "document.querySelectorAll('svg.chart path, svg.chart rect, svg.chart circle').length",
    "rows": "document.querySelectorAll('.ntable details.nrow').length",
    "open_rows": "document.querySelectorAll('.ntable details.nrow[open]').length",
    "tokens": "document.querySelectorAll('span.t').length",
    "scripts": "document.scripts.length",
    "title": "document.title",
    "width": "document.documentElement.scrollWidth",
    "sections": "Array.from(document.querySelectorAll('section h2')).map(h => h.textContent)",
    "dose_charts": "document.querySelectorAll('svg.hate-dose').length",
}


@needs_chromium
def test_report_in_headless_chromium(run_dir, tmp_path):
    path = write_report(run_dir, tmp_path / "report.html")
    png = tmp_path / "report.png"
    check = check_page(path, evaluate=PAGE_QUERIES, screenshot=png, width=1280)
    assert check.errors == []
    assert check.requests == [path.resolve().as_uri()]  # the page itself and nothing else
    v = check.values
    assert v["charts"] == 12 and v["chart_marks"] > 60
    assert v["dose_charts"] == 1  # the hate study's effect against its fluency cost
    assert v["rows"] == 50 and v["open_rows"] == 2 and v["tokens"] > 100 and v["scripts"] == 0
    assert v["width"] <= 1280  # no horizontal overflow
    assert v["sections"] == ["The run", "Concept vector quality per layer", "Where the concept neurons live",
                             "Top neurons", "Concept removal on held-out data", "Hate speech",
                             "Social bias before and after"]
    from PIL import Image

    with Image.open(png) as im:
        assert im.size[0] == 1280 and im.size[1] > 2000
        colours = im.convert("RGB").resize((64, 256)).getcolors(64 * 256)
        assert len(colours) > 50  # a drawn page, not a blank one


@needs_chromium
def test_escaped_page_in_headless_chromium(evil_run_dir, tmp_path):
    path = write_report(evil_run_dir, tmp_path / "evil.html")
    check = check_page(path, evaluate=PAGE_QUERIES)
    assert check.errors == []  # no script ran (it would log 'pwned') and CSP blocked nothing
    assert check.values["scripts"] == 0 and check.values["title"].startswith("weather <script>")
    assert len(check.values["sections"]) == 4 and check.values["rows"] > 0


def test_study_dose_response_charts_follow_the_results(run_dir, tmp_path):
    """The hate and bias sections draw the effect against the perplexity ratio: one point per K on
    each line (concept and random), the concept line's 95% interval as a band when the study gives one."""
    import shutil

    d = tmp_path / "r"
    shutil.copytree(run_dir, d)
    hate = json.loads(json.dumps(HATE))
    for r in hate["results"]:
        r["hate_rate_ci"] = [r["hate_rate"] - 0.05, r["hate_rate"] + 0.05]
    hate.update(judge="minilm", judges={"minilm": {"davidson": {"f1_hate": 0.61}}, "tfidf": {"davidson": {"f1_hate": 0.41}}},
                agreement={"n": 400, "agreement": 0.9, "kappa": 0.5}, n_continuations=400)
    (d / "hate.json").write_text(json.dumps(hate))
    bias = json.loads(json.dumps(BIAS))
    bias["results"] = [{**r, "bias_type": "all", "k": k, "random_ppl_ratio": 1.0 + k / 1000, "ppl_ratio": 1 + k / 100}
                       for r, k in zip(bias["results"] * 2, (10, 50))]
    (d / "bias.json").write_text(json.dumps(bias))
    page = parse(render_report(d))
    svgs = [a.get("class", "") for t, a in page.tags if t == "svg"]
    assert "chart hate-dose" in svgs and "chart bias-dose" in svgs
    text = " ".join(page.text)
    assert "minilm (judge): davidson F1 0.610" in text and "400 continuations per condition" in text
    assert "agree on 0.900" in text
    (d / "bias.json").write_text(json.dumps(BIAS))  # one K: no dose-response line to draw
    assert "bias-dose" not in render_report(d)


def test_tick_labels_are_distinct_and_spaced():
    from neat_llm.report.charts import CHAR_W, spaced, tick_labels

    assert tick_labels([1.165, 1.220]) == ["1.17", "1.22"] or tick_labels([1.165, 1.220]) == ["1.16", "1.22"]
    assert tick_labels([0.5, 1.0, 2.0]) == ["0.5", "1", "2"]  # short where short is distinct
    labels = ["0.986", "1.001", "1.003", "1.165"]
    xs = [100.0, 110.0, 112.0, 300.0]
    keep = spaced(xs, labels)
    assert keep == [0, 3]  # 1.001 and 1.003 would run into 0.986
    for a, b in zip(keep, keep[1:]):
        assert xs[b] - CHAR_W * len(labels[b]) / 2 >= xs[a] + CHAR_W * len(labels[a]) / 2


OVERLAPS = """(() => {
  let n = 0;
  for (const svg of document.querySelectorAll('svg.chart')) {
    const r = Array.from(svg.querySelectorAll('text.tick')).map(t => t.getBoundingClientRect());
    for (let i = 0; i < r.length; i++) for (let j = i + 1; j < r.length; j++)
      if (r[i].left < r[j].right && r[j].left < r[i].right && r[i].top < r[j].bottom && r[j].top < r[i].bottom) n++;
  }
  return n;
})()"""


@needs_chromium
def test_chart_ticks_never_overlap_and_the_forest_plot_keeps_to_the_budget(run_dir, tmp_path):
    """The dose-response x axis is the perplexity ratio of each K: nearby ratios (0.986, 1.001, 1.003)
    must not be drawn on top of each other, 1.165 and 1.220 not both as "1.2"; the per-type chart
    shows the largest K within the budget (here K = 100 at ×1.003, not K = 2000 at ×1.220), and
    chart text is not drawn larger than the page's."""
    import shutil

    d = tmp_path / "r"
    shutil.copytree(run_dir, d)
    ppl = {10: 0.986, 50: 1.001, 100: 1.003, 500: 1.165, 2000: 1.220}
    bias = json.loads(json.dumps(BIAS))
    rows = [*BIAS["results"], {**BIAS["results"][0], "bias_type": "all", "n": 200}]
    bias["results"] = [{**r, "k": k, "ppl_ratio": v, "random_ppl_ratio": v - 0.004} for r in rows for k, v in ppl.items()]
    (d / "bias.json").write_text(json.dumps(bias))
    path = write_report(d, tmp_path / "report.html")
    html = path.read_text()
    assert "K = 100 neurons off (perplexity ×1.003, within 1.1)" in html
    check = check_page(path, evaluate={
        "overlaps": OVERLAPS,
        "ticks": "Array.from(document.querySelectorAll('svg.bias-dose text.tick')).map(t => t.textContent)",
        "chart_px": "Math.max(...Array.from(document.querySelectorAll('svg.chart text.tick')).map(t => t.getBoundingClientRect().height))",
        "body_px": "parseFloat(getComputedStyle(document.body).fontSize)"}, width=1280)
    v = check.values
    assert check.errors == [] and v["overlaps"] == 0
    assert len(v["ticks"]) >= 2 and len(set(v["ticks"])) == len(v["ticks"])  # labelled ticks, each distinct
    assert v["chart_px"] <= 1.25 * v["body_px"]  # chart text is not blown up past the page's
