"""The generic path: any attention processor whose ``__call__`` calls diffusers'
``dispatch_attention_fn`` (or ``F.scaled_dot_product_attention``) directly.

No processor is rewritten. :class:`EntropyDispatchProcessor` wraps the stock processor of one
layer and runs the stock ``__call__`` code with those two names bound, *for that call only*, to
an interceptor of its own: the function is rebuilt once from the stock code object over a copy of
its module's globals, so nothing process-wide is patched and other models (and other layers of
the same model) keep calling the real dispatcher. The interceptor

1. works out the call's softmax scale (:meth:`EntropyDispatchProcessor.call_scale`):
   ``base * sqrt(ln N / ln T)``, with ``base`` the scale the stock processor passes (its
   ``1/sqrt(d)`` default when it passes none), ``N`` the keys of the call and ``T`` the keys of
   the same call (layer, and call number within the layer) at the training size;
2. attends (:meth:`EntropyDispatchProcessor.attend`): entropy-attn's op (fused kernel on CUDA,
   PyTorch elsewhere), or the diffusers backend chosen for the layer with ``scale=``, or, for
   calls the op does not take (masks, dropout, causal, grouped queries), the stock function with
   ``scale=``; records the entropy when asked.

A call that carries diffusers' context-parallel config (``enable_parallelism`` with Ulysses or
ring, before or after ``enable``) takes the scale of the global ``N`` (every rank's keys) and
attends over every rank's keys (:meth:`EntropyDispatchProcessor.attend_parallel`); recorded
entropy is averaged over the ranks, for the calls a model makes without the config too (Wan's
cross-attention, whose queries are still split).

``T`` and the kind of each call come from :func:`probe_calls`: the same interceptor, counting,
on a copy of the denoiser built on the meta device and run at the training size, then at twice
the height. A call whose keys grow with the image has image tokens among its keys: ``"self"``,
or ``"joint"`` when it has keys beyond them, text tokens as a rule (SD3/FLUX-style
joint attention, CogVideoX, Qwen-Image, HunyuanVideo); the paper's rule rescales these. A call
whose keys do not grow with the image attends to text or image-encoder tokens (``"cross"``: Wan's
text and I2V image cross-attention, LTX-Video's text cross-attention, HunyuanVideo's text
refiner, Z-Image's caption refiner) and keeps its scale. ``torch.compile`` traces the wrapped
layers, all but three kinds (see :meth:`EntropyDispatchProcessor.__call__`).

One file because its parts are one mechanism: the interceptor that rebinds a stock processor's
dispatcher call, the processor that runs that rebound code with the scale, and the meta-device
probe that counts the same calls with the same interceptor (split apart, each would need the
others' private classes).
"""

from __future__ import annotations

import functools
import inspect
import json
import threading
import types
from dataclasses import dataclass

import torch

from ..op.api import dispatch
from ..op.reference import attention_entropy
from .attention_base import EntropyAttnBase, layer_scale, needs_grad
from .backends import check_context_parallel_backend, op_backend, takes_scale
from .parallel import (
    check_parallel_config,
    context_parallel_attention,
    context_parallel_config,
    cp_degree,
    cp_mean,
    global_key_tokens,
)

# Processors with a temperature of their own: entropy-attn's scale on top would be a second one.
BUILT_IN_TEMPERATURE = {
    "LuminaAttnProcessor2_0": "Lumina-Next's proportional attention",
    "Lumina2AttnProcessor2_0": "Lumina2's proportional attention",
}


def built_in_temperature(processor) -> str | None:
    """What temperature a processor applies by itself (``None``: none known). Lumina-Next and
    Lumina2 scale attention by ``sqrt(log(N, base_sequence_length))``; a processor whose
    ``__call__`` takes a ``base_sequence_length`` or ``proportional_attn`` argument is treated
    the same."""
    name = type(processor).__name__
    if name in BUILT_IN_TEMPERATURE:
        return BUILT_IN_TEMPERATURE[name]
    function = _stock_call(processor)
    code = function.__code__ if function is not None else None
    arguments = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount] if code else ()
    if "base_sequence_length" in arguments or "proportional_attn" in arguments:
        return f"{name}'s proportional attention (base_sequence_length)"
    return None


def _stock_call(processor):
    """The plain function behind ``type(processor).__call__``, or ``None``."""
    function = vars(type(processor)).get("__call__")
    for base in type(processor).__mro__[1:]:
        if function is not None:
            break
        function = vars(base).get("__call__")
    return function if isinstance(function, types.FunctionType) else None


def calls_dispatcher(processor) -> bool:
    """Whether a processor's ``__call__`` itself calls ``dispatch_attention_fn`` or
    ``F.scaled_dot_product_attention`` (the two names the generic path intercepts)."""
    from diffusers.models.attention_dispatch import dispatch_attention_fn

    function = _stock_call(processor)
    if function is None or built_in_temperature(processor) is not None:
        return False
    names = function.__code__.co_names
    scope = function.__globals__
    if "dispatch_attention_fn" in names and scope.get("dispatch_attention_fn") is (
        dispatch_attention_fn
    ):
        return True
    return (
        "F" in names
        and scope.get("F") is torch.nn.functional
        and "scaled_dot_product_attention" in names
    )


def _signed(function, stock):
    """``function`` with the signature of ``stock.__call__`` (what diffusers inspects)."""
    function.__signature__ = inspect.signature(stock.__call__)
    return function


class _Functional:
    """``torch.nn.functional`` for one processor's code, with SDPA intercepted."""

    def __init__(self, sdpa) -> None:
        self.scaled_dot_product_attention = sdpa

    def __getattr__(self, name):
        return getattr(torch.nn.functional, name)


def _rebound(function: types.FunctionType, dispatcher, sdpa) -> types.FunctionType:
    """``function`` over a copy of its globals in which ``dispatch_attention_fn`` and ``F``
    (SDPA only) are the given interceptors.

    The copy is a plain dict without ``__name__``, registered nowhere. torch.compile reads the
    globals of a function it inlines as ``sys.modules[globals["__name__"]]`` when they have a
    ``__name__`` (guards and its cache of traced values keyed by that name and the attribute),
    else as the dict itself (keyed by its ``id``): only the latter tells the layers' copies apart.
    Copies that kept the stock module's ``__name__`` took the stock module's place in
    ``sys.modules``, and torch.compile traced every wrapped layer with the interceptor of the
    first one it met (wrong scales: Wan's cross-attention got its self-attention's ``T``). An
    entry in ``sys.modules`` under a name of its own would work too, but would keep every
    wrapper alive for the life of the process. The code object is a copy too (equal, not the
    same): torch.compile keeps what it compiled for a frame on the frame's code object, and what
    it compiled for one layer after a graph break inside the layer calls names it stored in that
    layer's globals (another layer sharing the code object: ``NameError: __compiled_fn_...``).
    """
    scope = dict(function.__globals__)
    scope.pop("__name__", None)
    if "dispatch_attention_fn" in scope:
        scope["dispatch_attention_fn"] = dispatcher
    if scope.get("F") is torch.nn.functional:
        scope["F"] = _Functional(sdpa)
    code = function.__code__.replace()  # a copy (see above)
    rebound = types.FunctionType(
        code, scope, function.__name__, function.__defaults__, function.__closure__
    )
    rebound.__kwdefaults__ = function.__kwdefaults__
    rebound.__module__ = function.__module__
    rebound.__qualname__ = function.__qualname__
    return rebound


@dataclass(frozen=True)
class CallTokens:
    """One attention call of a layer: tokens at the probed size and what its keys are."""

    query_tokens: int
    key_tokens: int
    kind: str = "self"  # "self", "joint" or "cross" (see the module docstring)
    heads: int = 0
    head_dim: int = 0
    base_scale: float = 0.0  # the scale the stock call applies (its scale=, else 1/sqrt(d))
    processor: str = ""  # class name of the stock processor that made the call


class _Interceptor:
    """The two intercepting functions of one wrapper; ``on_call(layout, args)`` does the work.

    ``layout`` is ``"BLHD"`` for the dispatcher's ``(batch, tokens, heads, head_dim)`` and
    ``"BHLD"`` for SDPA's.
    """

    def __init__(self, on_call) -> None:
        self.on_call = on_call

    def dispatcher(
        self,
        query,
        key,
        value,
        attn_mask=None,
        dropout_p=0.0,
        is_causal=False,
        scale=None,
        enable_gqa=False,
        attention_kwargs=None,
        *,
        backend=None,
        parallel_config=None,
    ):
        call = _Call(
            "BLHD", query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa,
            {"attention_kwargs": attention_kwargs, "backend": backend,
             "parallel_config": parallel_config},
        )  # fmt: skip
        return self.on_call(call)

    def sdpa(
        self,
        query,
        key,
        value,
        attn_mask=None,
        dropout_p=0.0,
        is_causal=False,
        scale=None,
        enable_gqa=False,
    ):
        call = _Call("BHLD", query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)
        return self.on_call(call)


@dataclass
class _Call:
    """One intercepted attention call, as the stock processor made it."""

    layout: str
    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    attn_mask: torch.Tensor | None
    dropout_p: float
    is_causal: bool
    scale: float | None
    enable_gqa: bool
    extra: dict | None = None  # the dispatcher's attention_kwargs, backend, parallel_config

    @property
    def query_tokens(self) -> int:
        return self.query.shape[1 if self.layout == "BLHD" else 2]

    @property
    def key_tokens(self) -> int:
        return self.key.shape[1 if self.layout == "BLHD" else 2]

    @property
    def base_scale(self) -> float:
        """The scale the stock call applies: its ``scale=``, else ``1/sqrt(head_dim)``."""
        return self.query.shape[-1] ** -0.5 if self.scale is None else float(self.scale)

    def heads_first(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.transpose(1, 2) if self.layout == "BLHD" else tensor

    def stock(self, scale: float | None, backend=None):
        """The call as the stock processor made it, with ``scale`` (and ``backend`` if given)."""
        args = (self.query, self.key, self.value, self.attn_mask, self.dropout_p, self.is_causal)
        if self.layout == "BHLD":
            return torch.nn.functional.scaled_dot_product_attention(
                *args, scale=scale, enable_gqa=self.enable_gqa
            )
        from diffusers.models.attention_dispatch import dispatch_attention_fn

        extra = dict(self.extra or {})
        if backend is not None:
            extra["backend"] = backend
        return dispatch_attention_fn(
            *args, scale=scale, enable_gqa=self.enable_gqa, **extra
        )  # fmt: skip

    @property
    def sdpa_mask(self) -> torch.Tensor | None:
        """The mask in SDPA's ``(batch, heads, seq_q, seq_k)`` broadcast form: the dispatcher's
        ``(batch, seq_k)`` masks are widened as its native backend does."""
        mask = self.attn_mask
        if mask is not None and self.layout == "BLHD" and mask.ndim == 2:
            return mask[:, None, None, :]
        return mask

    @property
    def parallel_config(self):
        """diffusers' ``ParallelConfig`` passed with the call (``None``: none passed)."""
        return (self.extra or {}).get("parallel_config")

    @property
    def unmasked(self) -> bool:
        """No mask, dropout, causal mask or grouped queries, nothing extra for the backend, one
        dtype: what entropy-attn's op (and its context-parallel form) computes."""
        extra = self.extra or {}
        return (
            self.attn_mask is None
            and not self.dropout_p
            and not self.is_causal
            and not self.enable_gqa
            and not extra.get("attention_kwargs")
            and self.query.dtype == self.key.dtype == self.value.dtype
            and self.query.shape[-2 if self.layout == "BLHD" else 1]
            == self.key.shape[-2 if self.layout == "BLHD" else 1]
        )

    @property
    def plain(self) -> bool:
        """Whether entropy-attn's op computes this call on this process alone: :attr:`unmasked`
        and no ``parallel_config`` passed."""
        return self.unmasked and self.parallel_config is None


class _CallCounter(threading.local):
    index: int | None = None


class EntropyDispatchProcessor(EntropyAttnBase):
    """A stock processor that calls the dispatcher, with the entropy-preserving scale per call.

    Args:
        stock: the processor it wraps (kept as it is; it runs its own code).
        name: qualified layer name.
        calls: per attention call of the layer, in order, its tokens and kind at the training
            size (:func:`probe_calls`).
        rescale: per call, whether it gets the entropy-preserving scale.
        backend, recorder, attention_backend: as for entropy-attn's other processors.
    """

    def __init__(
        self,
        stock,
        name: str,
        *,
        calls: tuple[CallTokens, ...],
        rescale: tuple[bool, ...],
        backend: str = "auto",
        recorder=None,
        attention_backend=None,
    ) -> None:
        if len(calls) != len(rescale) or not calls:
            raise ValueError(f"{name}: calls and rescale must be non-empty and of equal length")
        first = next((c for c, on in zip(calls, rescale, strict=True) if on), calls[0])
        super().__init__(
            name,
            train_tokens=first.key_tokens,
            rescale=any(rescale),
            backend=backend,
            recorder=recorder,
            attention_backend=attention_backend,
        )
        self.stock = stock
        self.calls = tuple(calls)
        self.rescale_calls = tuple(bool(on) for on in rescale)
        self._counter = _CallCounter()
        self._function = self._rebound_stock()

    def __new__(cls, stock, *args, **kwargs):
        # diffusers' attention modules pass a processor only the keyword arguments that
        # inspect.signature(processor.__call__) lists: an instance is of a subclass whose
        # __call__ shows the stock processor's signature (one subclass per stock class).
        return object.__new__(_signed_class(cls, type(stock)))

    def __reduce__(self):
        return _restore, (self.__getstate__(),)

    @classmethod
    def replacing(cls, stock, name: str, **options) -> EntropyDispatchProcessor:
        options.pop("train_tokens", None)  # per call, in ``calls``
        return cls(stock, name, **options)

    def _rebound_stock(self):
        """The stock ``__call__`` bound to this wrapper's interceptor. Built with the wrapper (and
        on unpickling), never while torch.compile traces a call: making a function there is a
        graph break."""
        interceptor = _Interceptor(self._on_call)
        return _rebound(_stock_call(self.stock), interceptor.dispatcher, interceptor.sdpa)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_function"] = None
        state["_counter"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._counter = _CallCounter()
        self._function = self._rebound_stock()

    def __call__(self, attn, *args, **kwargs):
        # torch.compile traces the layer (no graph break): the rebound stock code, the scale
        # (a constant of the graph, from the call's shapes: a graph per key count) and
        # entropy-attn's op. Three cases run the layer eagerly, a graph break each, as every
        # layer did before it was traceable: a layer that makes several attention calls (Wan
        # I2V's cross-attention: image, then text), whose call count is thread-local, which
        # torch.compile cannot guard; recording entropy (the recorder's bookkeeping would break
        # the graph many times); diffusers' context parallelism (untested under torch.compile).
        if (
            len(self.calls) > 1
            or self.recorder is not None
            or getattr(self.stock, "_parallel_config", None) is not None
        ):
            return self._eager_call(attn, *args, **kwargs)
        return self._call(attn, *args, **kwargs)

    @torch.compiler.disable
    def _eager_call(self, attn, *args, **kwargs):
        return self._call(attn, *args, **kwargs)

    def _call(self, attn, *args, **kwargs):
        if len(self.calls) == 1:
            return self._function(self.stock, attn, *args, **kwargs)
        counter = self._counter
        outer = counter.index
        counter.index = 0
        try:
            return self._function(self.stock, attn, *args, **kwargs)
        finally:
            counter.index = outer

    # diffusers' enable_parallelism gives its ParallelConfig to every processor that has this
    # attribute, and the stock code reads it off the stock processor (``self`` in its __call__,
    # which passes it to the dispatcher): the wrapper's is the stock processor's, read and written
    # through, whichever comes first, enable or enable_parallelism. A stock processor without the
    # attribute gives none (AttributeError), as diffusers expects.
    @property
    def _parallel_config(self):
        return self.stock._parallel_config

    @_parallel_config.setter
    def _parallel_config(self, config) -> None:
        self.stock._parallel_config = config

    def __getattr__(self, name):
        # Attributes the model reads off its processor (e.g. a processor's own options) are the
        # stock processor's.
        if name.startswith("__") or name in ("stock", "_counter", "_function", "calls"):
            raise AttributeError(name)
        return getattr(self.stock, name)

    # -- the two separable steps ------------------------------------------------------------

    def call_scale(self, index: int, n_tokens: int, base_scale: float) -> float:
        """The softmax scale of call ``index`` of the layer with ``n_tokens`` keys."""
        if not self.rescale_calls[index]:
            return base_scale
        return layer_scale(n_tokens, self.calls[index].key_tokens, base_scale)

    def attend(self, call: _Call, scale: float, index: int):
        """The attention of one intercepted call at ``scale``, in the call's own layout;
        records the entropy when asked."""
        same = scale == call.base_scale
        # The stock value (None when the stock call passed none) keeps stock numerics bit for bit.
        call_scale = call.scale if same else scale
        record = self.recorder is not None
        backend = self._attention_backend
        if not record and backend is not None and takes_scale(backend, call_scale):
            return call.stock(call_scale, backend=backend)
        if not record and not call.plain:
            return call.stock(call_scale)
        query, key, value = (call.heads_first(t) for t in (call.query, call.key, call.value))
        if not call.plain:  # recorded, masked (or the like): stock call, entropy on the side
            out = call.stock(call_scale)
            with torch.no_grad():
                entropy = attention_entropy(query, key, call_scale, attn_mask=call.sdpa_mask)
        else:
            fused = record and not needs_grad(query, key)
            sdpa_scale = None if call_scale is None or call_scale == query.shape[-1] ** -0.5 else (
                call_scale
            )  # fmt: skip
            result = dispatch(query, key, value, sdpa_scale, fused, op_backend(self.backend, fused))
            out, entropy = result if fused else (result, None)
            if record and entropy is None:
                with torch.no_grad():
                    entropy = attention_entropy(query, key, sdpa_scale)
            out = out.transpose(1, 2) if call.layout == "BLHD" else out
        if record:
            # Under context parallelism a call made without the parallel config (Wan's
            # cross-attention) still holds this rank's shard of the queries: the mean over every
            # rank's rows is what a single process records.
            config = getattr(self, "_parallel_config", None)
            ranks = cp_degree(config)
            entropy = (
                entropy if context_parallel_config(config) is None else cp_mean(entropy, config)
            )
            self._record(index, entropy, query, query.shape[2] * ranks, key.shape[2], scale)
        return out

    def _record(self, index: int, entropy, query, query_tokens: int, n_tokens: int, scale: float):
        self.recorder.add(
            entropy,
            layer=self.name,
            kind=self.calls[index].kind,
            heads=query.shape[1],
            head_dim=query.shape[-1],
            query_tokens=query_tokens,
            n_tokens=n_tokens,
            train_tokens=self.calls[index].key_tokens,
            scale=scale,
        )

    def attend_parallel(self, call: _Call, index: int):
        """A call made with diffusers' context-parallel config: this rank holds a shard of the
        tokens. ``N`` counts every rank's keys
        (:func:`~entropy_attn.integration.parallel.global_key_tokens`), and the attention runs over
        all of them: through the user's diffusers backend with ``scale=`` (diffusers' own
        Ulysses/ring for it), else entropy-attn's op inside diffusers' templates
        (:func:`~entropy_attn.integration.parallel.context_parallel_attention`). A recorded entropy
        is the mean over every rank's rows (:func:`~entropy_attn.integration.parallel.cp_mean`): the
        value a single process records."""
        config = call.parallel_config
        check_parallel_config(config, where=f"layer {self.name!r}")
        n_tokens = global_key_tokens(call.key_tokens, config)
        scale = self.call_scale(index, n_tokens, call.base_scale)
        call_scale = call.scale if scale == call.base_scale else scale
        record = self.recorder is not None
        backend = self._attention_backend
        if not record and backend is not None and takes_scale(backend, call_scale):
            check_context_parallel_backend(backend, self.name)
            return call.stock(call_scale, backend=backend)
        if not call.unmasked:
            if record:
                raise ValueError(
                    f"layer {self.name!r}: recording entropy under context parallelism supports "
                    "unmasked, non-causal attention without dropout or grouped queries"
                )
            return call.stock(call_scale)  # diffusers' own Ulysses/ring, with the scale
        query, key, value = (call.heads_first(t) for t in (call.query, call.key, call.value))
        sdpa_scale = None if call_scale is None or call_scale == query.shape[-1] ** -0.5 else (
            call_scale
        )  # fmt: skip
        out = context_parallel_attention(
            query, key, value, sdpa_scale, config,
            backend=op_backend(self.backend, record), return_entropy=record,
        )  # fmt: skip
        if record:
            out, entropy = out
            query_tokens = query.shape[2] * cp_degree(config)
            self._record(index, cp_mean(entropy, config), query, query_tokens, n_tokens, scale)
        return out.transpose(1, 2) if call.layout == "BLHD" else out

    def _on_call(self, call: _Call):
        if len(self.calls) == 1:  # the usual case: no counting (nothing for torch.compile)
            if context_parallel_config(call.parallel_config) is not None:
                return self.attend_parallel(call, 0)
            return self.attend(call, self.call_scale(0, call.key_tokens, call.base_scale), 0)
        counter = self._counter
        index = counter.index if counter.index is not None else 0
        counter.index = index + 1
        if index >= len(self.calls):
            raise RuntimeError(
                f"{self.name}: attention call {index + 1} of the layer, but it made "
                f"{len(self.calls)} at the training size when entropy-attn counted its tokens "
                "(different inputs, e.g. image embeddings given or left out?); enable again with "
                "the inputs the layer gets"
            )
        if context_parallel_config(call.parallel_config) is not None:
            return self.attend_parallel(call, index)
        scale = self.call_scale(index, call.key_tokens, call.base_scale)
        return self.attend(call, scale, index)

    def __repr__(self) -> str:
        return (
            f"EntropyDispatchProcessor({self.name!r}, {type(self.stock).__name__}, "
            f"train_tokens={[c.key_tokens for c in self.calls]}, "
            f"rescale={list(self.rescale_calls)}, backend={self.backend!r})"
        )


_SIGNED: dict[tuple[type, type], type] = {}


def _signed_class(base: type, stock_cls: type) -> type:
    """``base`` with a ``__call__`` that shows ``stock_cls.__call__``'s signature."""
    if getattr(base, "_signed_for", None) is not None:
        base = base.__mro__[1]
    key = (base, stock_cls)
    cls = _SIGNED.get(key)
    if cls is None:
        call = base.__call__
        function = types.FunctionType(
            call.__code__, call.__globals__, call.__name__, call.__defaults__, call.__closure__
        )
        function.__qualname__ = call.__qualname__
        function.__signature__ = inspect.signature(stock_cls.__call__)
        namespace = {"__call__": function, "__module__": base.__module__, "_signed_for": stock_cls}
        cls = _SIGNED[key] = type(base.__name__, (base,), namespace)
    return cls


def _restore(state: dict) -> EntropyDispatchProcessor:
    """Unpickle an :class:`EntropyDispatchProcessor` (its class is made per stock class)."""
    processor = object.__new__(_signed_class(EntropyDispatchProcessor, type(state["stock"])))
    processor.__setstate__(state)
    return processor


# ---------------------------------------------------------------------------------------------
# Counting tokens on the meta device


class _Counting:
    """Runs a processor's code and records each intercepted call's tokens, returning an empty
    output of the right shape instead of attending (meta tensors)."""

    def __init__(self, processor, seen: list) -> None:
        self.processor = processor
        self.seen = seen
        interceptor = _Interceptor(self._on_call)
        self.function = _rebound(_stock_call(processor), interceptor.dispatcher, interceptor.sdpa)
        self.__call__ = _signed(
            lambda attn, *a, **k: type(self).__call__(self, attn, *a, **k), processor
        )

    def _on_call(self, call: _Call):
        heads = call.query.shape[2 if call.layout == "BLHD" else 1]
        base = call.base_scale
        self.seen.append((call.query_tokens, call.key_tokens, heads, call.query.shape[-1], base))
        return call.query.new_empty((*call.query.shape[:-1], call.value.shape[-1]))

    def __call__(self, attn, *args, **kwargs):
        return self.function(self.processor, attn, *args, **kwargs)


_PROBE_LOCK = threading.Lock()


@functools.lru_cache(maxsize=4)
def _meta_model(cls_name: str, config_json: str):
    """The denoiser built once on the meta device, its dispatcher-calling layers counting."""
    import diffusers

    from .probe import attention_modules

    with torch.device("meta"):
        model = getattr(diffusers, cls_name).from_config(json.loads(config_json))
    counters = {}
    for name, module in attention_modules(model).items():
        if calls_dispatcher(module.processor):
            counters[name] = module.processor = _Counting(module.processor, [])
    return model, counters


@functools.lru_cache(maxsize=256)
def _probe(cls_name: str, config_json: str, latent: tuple[int, int, int], text_tokens: int):
    from .families import FAMILIES, meta_maker

    frames, height, width = latent
    inputs = FAMILIES[cls_name].inputs(
        json.loads(config_json), frames, height, width, text_tokens, meta_maker
    )
    with _PROBE_LOCK:
        model, counters = _meta_model(cls_name, config_json)
        for counter in counters.values():
            counter.seen = []
        with torch.no_grad():
            model(**inputs)
        seen = {name: (type(c.processor).__name__, tuple(c.seen)) for name, c in counters.items()}
    return {name: calls for name, calls in seen.items() if calls[1]}


def probe_calls(
    denoiser: torch.nn.Module,
    latent: tuple[int, int, int],
    *,
    text_tokens: int,
    classify: bool = True,
) -> dict[str, tuple[CallTokens, ...]]:
    """The attention calls of each layer that calls the dispatcher, at a latent size.

    Args:
        denoiser: a denoiser of a class in :data:`entropy_attn.integration.families.FAMILIES`; only
            its config is used.
        latent: ``(frames, height, width)`` of the latent (``frames`` 1 for image models).
        text_tokens: text tokens fed to the denoiser.
        classify: find each call's kind (two more meta runs); ``False`` leaves it ``""``.

    Returns:
        qualified layer name -> its calls in order, each with query and key tokens and its kind
        (from a second probe at twice the height: keys that grow are image tokens, "self";
        with keys beyond the image's, "joint"; keys that do not grow, "cross").
    """
    from .probe import unwrap

    model = unwrap(denoiser)
    frames, height, width = (int(v) for v in latent)
    if min(frames, height, width) < 1:
        raise ValueError(f"latent must be positive (frames, height, width), got {latent}")
    key = (type(model).__name__, json.dumps(dict(model.config), sort_keys=True, default=str))
    try:
        here = _probe(*key, (frames, height, width), int(text_tokens))
        if not classify:
            return {
                name: tuple(CallTokens(q, k, "", h, d, b, processor) for q, k, h, d, b in calls)
                for name, (processor, calls) in here.items()
            }
        taller = _probe(*key, (frames, 2 * height, width), int(text_tokens))
    except RuntimeError as error:
        raise ValueError(
            f"a {frames}x{height}x{width} latent (frames x height x width) cannot run through "
            f"{type(model).__name__} ({error}); choose a size its patching takes"
        ) from None
    result = {}
    for name, (processor, calls) in here.items():
        kinds = []
        for index, (query_tokens, key_tokens, heads, head_dim, base) in enumerate(calls):
            taller_keys = taller[name][1][index][1]
            image = taller_keys != key_tokens
            # Doubling the height doubles the image keys: keys beyond them are text (or other)
            # tokens attending together with the image.
            text = 2 * key_tokens > taller_keys
            kind = ("joint" if text else "self") if image else "cross"
            kinds.append(
                CallTokens(query_tokens, key_tokens, kind, heads, head_dim, base, processor)
            )
        result[name] = tuple(kinds)
    return result


__all__ = [
    "BUILT_IN_TEMPERATURE",
    "CallTokens",
    "EntropyDispatchProcessor",
    "built_in_temperature",
    "calls_dispatcher",
    "probe_calls",
]
