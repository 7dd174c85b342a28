"""``LoadedModel``: a Hugging Face causal LM with its tokenizer, adapter and pass counter."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property

import torch
from torch import nn

from .adapters import ModelFamily, UnsupportedModelError, down_weight_columns, get_module


class ContextLengthError(ValueError):
    """A text is longer than the model's context and ``strict`` was asked for."""


FIELDS = ("forward", "decode", "partial_forward", "block_forward", "backward")


@dataclass
class PassCounter:
    """Counts passes, one per sequence: a batch of 8 through the whole model is 8 forward passes.

    Every count is made in one place, never by hand at the call sites:
    - ``forward``: sequences run through the model from their first token (``LoadedModel``'s hook
      on the Hugging Face model);
    - ``decode``: sequences continued on top of their own KV cache (a generation step, or the
      read-position replay's last token), counted by the same hook;
    - ``block_forward``: block calls times sequences, made by the sweeps (``scoring.blocks.call_block``);
    - ``partial_forward``: sequences that ran through only some blocks, counted where a replica's
      concept score is read (``scoring.blocks.replica_drop``) and by the hook for the passes
      ``LoadedModel.run_through`` ends early;
    - ``backward``: sequences whose gradient was taken (``LoadedModel.gradients``).
    ``paused()`` stops counting (the adapter check is nobody's cost).
    """

    forward: int = 0
    decode: int = 0
    partial_forward: int = 0
    block_forward: int = 0
    backward: int = 0
    _paused: int = field(default=0, repr=False, compare=False)

    def add(self, kind: str, n: int) -> None:
        if not self._paused:
            setattr(self, kind, getattr(self, kind) + int(n))

    @contextmanager
    def paused(self) -> Iterator[None]:
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    def snapshot(self) -> "PassCounter":
        return PassCounter(**{k: getattr(self, k) for k in FIELDS})

    def since(self, earlier: "PassCounter") -> "PassCounter":
        return PassCounter(**{k: getattr(self, k) - getattr(earlier, k) for k in FIELDS})

    def add_all(self, other: "PassCounter") -> None:
        """Add another counter's counts in place (passes made elsewhere, e.g. by a Ray worker)."""
        for k in FIELDS:
            self.add(k, getattr(other, k))

    def plus(self, other: "PassCounter") -> "PassCounter":
        return PassCounter(**{k: getattr(self, k) + getattr(other, k) for k in FIELDS})

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in FIELDS}

    @classmethod
    def from_dict(cls, d: dict) -> "PassCounter":
        return cls(**{k: int(d.get(k, 0)) for k in FIELDS})


@dataclass
class LoadedModel:
    """A causal LM ready for neuron work.

    Attributes: ``hf`` (the Hugging Face model, eval mode, no grads), ``tokenizer``, ``family``
    (the adapter entry), ``model_id``, ``counter`` (forward passes are counted by a hook on ``hf``).
    Shapes: ``n_layers`` blocks, ``d_model`` residual width, ``d_ff`` neurons per block.
    """

    hf: nn.Module
    tokenizer: object
    family: ModelFamily
    model_id: str
    counter: PassCounter = field(default_factory=PassCounter)

    def __post_init__(self) -> None:
        self.hf.eval()
        for p in self.hf.parameters():
            p.requires_grad_(False)
        if getattr(self.tokenizer, "pad_token", None) is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "right"  # right padding keeps positions of real tokens unchanged
        # a text over the context loses its start, never its end: a read template's "\n" (where S is
        # read), a label question or a prompt's last line stays where every measure expects it
        self.tokenizer.truncation_side = "left"
        d_ffs = {self._out_shape(i)[0] for i in range(self.n_layers)}
        if len(d_ffs) != 1:
            raise ValueError(f"blocks of {self.model_id} have different MLP widths {sorted(d_ffs)}; not supported")
        # registered last: a model that fails the checks above must not keep a counting hook
        self._count_hook = self.hf.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, _m, args, kwargs):
        """A call that continues sequences on their own KV cache is a decoding step, else a forward."""
        x = kwargs.get("input_ids", args[0] if args else None)
        if x is None:
            x = kwargs.get("inputs_embeds")
        if x is None:
            return
        cache = kwargs.get("past_key_values", kwargs.get("cache"))
        filled = cache is not None and hasattr(cache, "get_seq_length") and int(cache.get_seq_length()) > 0
        kind = "decode" if filled else "partial_forward" if self._partial else "forward"
        self.counter.add(kind, int(x.shape[0]))

    _partial = False

    def run_through(self, layer: int, enc: dict[str, torch.Tensor]) -> torch.Tensor:
        """The output of block ``layer`` for the encoded batch ``enc`` ([B, T, d_model]); the pass
        ends there (later blocks and the unembedding never run), counted as partial forward passes."""
        from ..hooks import capture_outputs, run_until, stop_after

        if not 0 <= layer < self.n_layers:
            raise ValueError(f"block {layer} out of range: the model has blocks 0..{self.n_layers - 1}")
        self._partial = True
        try:
            with capture_outputs({0: self.blocks[layer]}) as res, stop_after(self.blocks[layer]):
                run_until(lambda: self.forward(enc))
        finally:
            self._partial = False
        return res[0][0]

    def forward(self, enc: dict[str, torch.Tensor], **kwargs):
        """One pass of the wrapped model over an encoded batch (``use_cache=False`` unless given):
        the one seam through which every module runs it (hooks, from ``hooks.py``, edit and capture)."""
        kwargs.setdefault("use_cache", False)
        return self.hf(**enc, **kwargs)

    def logits(self, enc: dict[str, torch.Tensor]) -> torch.Tensor:
        """The logits of one pass: [B, T, V]."""
        return self.forward(enc).logits

    def generate_ids(self, enc: dict[str, torch.Tensor], **kwargs) -> torch.Tensor:
        """``generate`` of the wrapped model on an encoded batch: the prompt ids and the new ones."""
        return self.hf.generate(**enc, **kwargs)

    def gradients(self, output: torch.Tensor, inputs, n_sequences: int):
        """``torch.autograd.grad(output, inputs)``, counted as ``n_sequences`` backward passes."""
        grads = torch.autograd.grad(output, inputs)
        self.counter.add("backward", n_sequences)
        return grads

    # --- structure -------------------------------------------------------------------------
    @cached_property
    def blocks(self) -> list[nn.Module]:
        blocks = get_module(self.hf, self.family.blocks)
        if not isinstance(blocks, (nn.ModuleList, nn.Sequential)) or len(blocks) == 0:
            raise UnsupportedModelError(
                f"{self.family.blocks!r} of {type(self.hf).__name__} is a {type(blocks).__name__}, not a non-empty "
                "list of blocks; the adapter table entry for this family does not match this model")
        return list(blocks)

    @cached_property
    def sites(self) -> list[nn.Module]:
        """The modules whose input is the neuron activation, one per block."""
        sites = [get_module(b, self.family.site) for b in self.blocks]
        w = getattr(sites[0], "weight", None)
        if not isinstance(w, torch.Tensor) or w.dim() != 2:
            raise UnsupportedModelError(
                f"neuron site {self.family.site!r} is a {type(sites[0]).__name__} without a 2-D weight; it must be "
                "the MLP down projection (nn.Linear or Conv1D); the adapter table entry does not match this model")
        return sites

    def writer(self, site: str, layer: int) -> nn.Module:
        """The module whose output is block ``layer``'s ``site``: "block" (the block's output, the
        residual stream after it), "mlp" (what its MLP adds to the residual stream: the down
        projection's output) or "attn" (what its attention adds). Refused by name where the family
        normalises that output before adding it (the module's output is then not what is written)."""
        if not 0 <= layer < self.n_layers:
            raise ValueError(f"block {layer} is out of range: the model has blocks 0..{self.n_layers - 1}")
        if site == "block":
            return self.blocks[layer]
        direct = {"mlp": self.family.mlp_output_direct, "attn": self.family.attn_output_direct}
        if site not in direct:
            raise ValueError(f"a writer site is one of block, mlp, attn; got {site!r}")
        if not direct[site]:
            raise UnsupportedModelError(
                f"{self.family.name} models normalise the {site} output before adding it to the residual stream, "
                f"so no module's output is what the {site} writes; edit the block's output (site 'block') instead")
        return self.sites[layer] if site == "mlp" else get_module(self.blocks[layer], self.family.attn)

    def check_writes(self, layer: int) -> nn.Module | None:
        """Whether what block ``layer``'s neurons write can be edited (``NeuronWrites``): refuses
        a block out of range, and by name a family that normalises its MLP output through no norm the
        adapter table names. Returns that norm, or None where the MLP output is the write."""
        if not 0 <= layer < self.n_layers:
            raise ValueError(f"block {layer} is out of range: the model has blocks 0..{self.n_layers - 1}")
        if self.family.mlp_output_direct:
            return None
        if self.family.mlp_out_norm is None:
            raise UnsupportedModelError(
                f"{self.family.name} models normalise the mlp output before adding it to the residual stream, and the "
                "adapter table names no norm (mlp_out_norm) through which to edit what neurons write")
        return get_module(self.blocks[layer], self.family.mlp_out_norm)

    def write_directions(self, layer: int, vector: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(p, u) [d_model] each, float32 on block ``layer``'s device: u = vector / |vector|, and p
        such that what neuron k of the block adds to the residual stream along u is a_k (w_k . p) r,
        w_k its row of the down projection. Where the MLP output h is added as it is, p = u and r = 1.
        Where the family normalises it first (Gemma 2/3: y = s * h / rms(h)), p = s * u and
        r = 1 / rms(h) at each position (``check_writes`` gives that norm)."""
        norm = self.check_writes(layer)
        dev = self.block_device(layer)
        u = vector.detach().float().flatten().to(dev)
        u = u / u.norm()
        if norm is None:
            return u, u
        return (norm.weight.detach().float().to(dev) + self.family.norm_offset) * u, u

    def write_scale(self, layer: int, h: torch.Tensor) -> torch.Tensor | None:
        """r at each position of h [..., d_model], block ``layer``'s MLP output: 1 / rms(h) as the
        family's norm after the MLP computes it ([...] float32), or None where h is added as it is
        (r = 1; ``write_directions``)."""
        norm = self.check_writes(layer)
        if norm is None:
            return None
        return torch.rsqrt(h.float().pow(2).mean(-1) + float(norm.eps))

    def write_along(self, layer: int, vector: torch.Tensor) -> torch.Tensor:
        """c_k = w_k . p for every neuron of block ``layer``: what each writes along ``vector``'s
        direction per unit of activation (times 1 / rms(h) where the MLP output is normalised; [d_ff]
        float32 on the CPU; ``write_directions``)."""
        p, _ = self.write_directions(layer, vector)
        return (self.weight_out(layer).detach().float().to(p.device) @ p).cpu()

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def d_ff(self) -> int:
        return int(self._out_shape(0)[0])

    @property
    def d_model(self) -> int:
        return int(self._out_shape(0)[1])

    @property
    def n_neurons(self) -> int:
        return self.n_layers * self.d_ff

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf.parameters()).dtype

    @property
    def max_length(self) -> int:
        cfg = self.hf.config
        for name in ("max_position_embeddings", "n_positions", "n_ctx"):
            v = getattr(cfg, name, None)
            if isinstance(v, int) and v > 0:
                return v
        return 2048

    def _out_shape(self, layer: int) -> torch.Size:
        """[d_ff, d_model] of block ``layer``, without loading offloaded weights."""
        return down_weight_columns(self.sites[layer].weight, self.family.down_layout).shape

    def weight_out(self, layer: int) -> torch.Tensor:
        """Output vector of every neuron of block ``layer``: [d_ff, d_model] (a view, no copy), on
        the device the block runs on. Where accelerate offloaded the block (``device_map`` with
        "cpu"/"disk" offload) the weight is a meta tensor outside the block's forward: it is then
        loaded through accelerate's hook (a copy; the last one is kept)."""
        w = self.sites[layer].weight
        if w.device.type == "meta":
            if self._onloaded[0] != layer:
                self._onloaded = (layer, self._onload_site_weight(layer))
            w = self._onloaded[1]
        return down_weight_columns(w, self.family.down_layout)

    _onloaded = (None, None)  # (layer, weight) of the last offloaded down projection loaded

    def _onload_site_weight(self, layer: int) -> torch.Tensor:
        from accelerate.utils import align_module_device, has_offloaded_params

        site = self.sites[layer]
        owners = [m for m in self.hf.modules() if has_offloaded_params(m) and any(s is site for s in m.modules())]
        if not owners:
            raise UnsupportedModelError(f"the down projection of block {layer} has no weights (meta tensor) and no "
                                        "accelerate offload hook that could load them")
        owner = min(owners, key=lambda m: sum(1 for _ in m.modules()))  # the innermost
        with torch.no_grad(), align_module_device(owner):
            return site.weight.detach().clone()

    def block_device(self, layer: int) -> torch.device:
        """Where block ``layer`` computes: accelerate's execution device for a dispatched model,
        else the device of its weights."""
        hook = getattr(self.blocks[layer], "_hf_hook", None)
        dev = getattr(hook, "execution_device", None)
        if dev is not None:
            return torch.device(dev) if not isinstance(dev, int) else torch.device("cuda", dev)
        w = self.sites[layer].weight
        return w.device if w.device.type != "meta" else self.device

    @cached_property
    def weights_hash(self) -> str:
        """blake2b over every parameter and buffer, in name order (stable across save/load)."""
        return weights_hash_of(self.hf)

    # --- text ------------------------------------------------------------------------------
    def encode(self, texts: list[str], *, strict: bool = False) -> dict[str, torch.Tensor]:
        """Tokenize with right padding. Texts over the context lose their first tokens (so a
        template's end stays), with a warning that says how many, or are refused with ``strict``.
        Returns ``input_ids`` and ``attention_mask``: [B, T]."""
        if isinstance(texts, str):
            texts = [texts]
        lengths = [len(ids) for ids in self.tokenizer(list(texts))["input_ids"]]
        too_long = [i for i, n in enumerate(lengths) if n > self.max_length]
        if too_long:
            msg = (f"{len(too_long)} text(s) are longer than the model's context of {self.max_length} tokens "
                   f"(first: #{too_long[0]}, {lengths[too_long[0]]} tokens)")
            if strict:
                raise ContextLengthError(msg + "; shorten them or drop --strict to truncate")
            cut = sum(lengths[i] - self.max_length for i in too_long)
            warnings.warn(msg + f"; truncating them from the start ({cut} tokens cut in all, {lengths[too_long[0]] - self.max_length} "
                          "from the first), so each text's end and its template stay", stacklevel=2)
        enc = self.tokenizer(list(texts), return_tensors="pt", padding=True, truncation=True,
                             max_length=self.max_length)
        if enc["input_ids"].shape[1] == 0 or (enc["attention_mask"].sum(1) == 0).any():
            raise ValueError("a text tokenizes to zero tokens; remove empty texts")
        return {"input_ids": enc["input_ids"].to(self.device),
                "attention_mask": enc["attention_mask"].to(self.device)}

    @torch.inference_mode()
    def generate(self, prompt: str, max_new_tokens: int = 40, *, do_sample: bool = False,
                 seed: int = 0, chat: bool = False, **kwargs) -> str:
        """Continue ``prompt`` and return only the new text (greedy unless ``do_sample``).
        With ``chat`` the prompt is wrapped in the tokenizer's chat template."""
        if chat and getattr(self.tokenizer, "chat_template", None):
            prompt = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                        tokenize=False, add_generation_prompt=True)
        enc = self.encode([prompt])
        torch.manual_seed(seed)
        out = self.hf.generate(**enc, max_new_tokens=max_new_tokens, do_sample=do_sample,
                               pad_token_id=self.tokenizer.pad_token_id, **kwargs)
        return self.tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def weights_hash_of(hf_model: torch.nn.Module) -> str:
    """blake2b over every parameter and buffer of a Hugging Face model, in name order: the hash an
    intervention file records (``LoadedModel.weights_hash``), for models held by other tools too."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in sorted(hf_model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
