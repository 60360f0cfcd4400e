"""What an enable call did, and the stack of enable calls on one denoiser.

:class:`EntropyAttnHandle` remembers the processors one call installed and the ones it replaced;
:class:`DenoiserState` (kept on the denoiser) orders the calls in force so that any of them can
be undone in any order, and puts entropy-attn's processors back where diffusers moved them aside
(``fuse_qkv_projections``, ``unload_ip_adapter``)."""

from __future__ import annotations

import torch

from .attention_base import EntropyAttnBase
from .probe import attention_modules
from .processors import replacement_for
from .recording import EntropyRecorder

_STATE_ATTR = "_entropy_attn_state"


class DenoiserState:
    """The enable calls in force on one denoiser, oldest first (kept on the denoiser itself).

    Each handle remembers, per layer it changed, its own processor and the one it found there
    (``previous``, possibly an earlier handle's). Disabling a handle takes its processors out of
    that chain: a layer still holding it gets ``previous`` back, a later handle that had covered
    it inherits ``previous`` instead, and a layer the user has since changed is left alone.
    """

    def __init__(self, denoiser: torch.nn.Module) -> None:
        self.handles: list[EntropyAttnHandle] = []
        self.denoiser = denoiser
        self._seen_originals = getattr(denoiser, "original_attn_processors", None)
        self._seen_unbound = EntropyAttnBase.unbound_made
        self._hook = denoiser.register_forward_pre_hook(self.reconcile)

    @staticmethod
    def of(denoiser: torch.nn.Module, create: bool = False) -> DenoiserState | None:
        state = getattr(denoiser, _STATE_ATTR, None)
        if state is None and create:
            state = DenoiserState(denoiser)
            setattr(denoiser, _STATE_ATTR, state)
        return state

    def close(self) -> None:
        """The last handle is gone: remove the hook and the state from the denoiser."""
        self._hook.remove()
        delattr(self.denoiser, _STATE_ATTR)

    def reconcile(self, *_hook_args) -> None:
        """Put entropy-attn's processors back where diffusers itself moved them aside without
        meaning to drop them (a forward pre-hook of the denoiser; also run by enable, disable
        and ``handle.active``). Two cases, each noticed in O(1) per forward:

        - ``fuse_qkv_projections()`` saved entropy-attn's processors in
          ``original_attn_processors`` and set ``FusedAttnProcessor2_0`` (SD3:
          ``FusedJointAttnProcessor2_0``) everywhere: entropy-attn reproduces it, so its own go
          back on (the fused one is what ``disable`` restores there);
        - ``unload_ip_adapter()`` rebuilt each processor as ``value.__class__()``: an unbound
          entropy-attn processor (see
          :class:`~entropy_attn.integration.attention_base.EntropyAttnBase`) on a layer gives way
          to the enable call's own.
        """
        originals = getattr(self.denoiser, "original_attn_processors", None)
        if originals is not self._seen_originals:
            self._seen_originals = originals
            if isinstance(originals, dict):
                for handle in self.handles:
                    handle._retake_fused(originals)
        if EntropyAttnBase.unbound_made != self._seen_unbound:
            self._seen_unbound = EntropyAttnBase.unbound_made
            top = {}  # layer -> the newest handle that installed a processor there
            for handle in self.handles:
                top.update(dict.fromkeys(handle.installed, handle))
            for name, handle in top.items():
                mine, module = handle.installed[name], handle._modules[name]
                current = module.processor
                if type(current) is type(mine) and current.name is None:
                    module.set_processor(mine)

    def underlying(self, name: str, processor):
        """The processor below entropy-attn's on layer ``name``: what the layer held before the
        enable calls in force first touched it (``processor`` itself if it is not theirs)."""
        for handle in reversed(self.handles):
            if handle.installed.get(name) is processor:
                processor = handle.previous[name]
        return processor


def judged_processors(denoiser, state: DenoiserState | None) -> dict:
    """Per layer, the processor a new enable judges: the one installed now, seen through
    entropy-attn's own (a user's processor installed after an enable is judged as it is)."""
    modules = attention_modules(denoiser)
    if state is None:
        return {name: module.processor for name, module in modules.items()}
    state.reconcile()
    return {name: state.underlying(name, module.processor) for name, module in modules.items()}


class EntropyAttnHandle:
    """What one :func:`enable` call did to one denoiser; undo it with :meth:`disable`.

    A handle belongs to the denoiser, not to the pipeline: pipelines that share a UNet share
    its handles.

    Attributes:
        denoiser: the model whose processors were replaced.
        installed: qualified layer name -> the entropy-attn processor this call installed.
        previous: qualified layer name -> the processor it replaced (possibly an earlier
            enable call's).
        train_latent_size: ``(height, width)`` of the training latent used for ``T``.
        recorder: the :class:`~entropy_attn.integration.recording.EntropyRecorder`, or ``None``
            (each ControlNet records into its own, on its handle).
        controlnet_handles: the handles the same call pushed on the pipeline's ControlNets
            (``()`` without ControlNets or with ``controlnet=False``); :meth:`disable` undoes
            them too.
    """

    def __init__(self, denoiser, installed, previous, plan, recorder, hook):
        self.denoiser = denoiser
        self.installed = installed
        self.previous = previous
        self.train_latent_size = plan.train_latent
        self.train_tokens = dict(plan.train_tokens)
        self.rescaled_layers = [name for name, on in plan.rescale.items() if on]
        self.recorder = recorder
        self._hook = hook
        modules = attention_modules(denoiser)
        self._modules = {name: modules[name] for name in installed}
        # The diffusers backend each installed processor started with: a different one at
        # disable was set by the user (set_attention_backend / reset_attention_backend while
        # enabled) and goes on to the processor put back.
        self._backends = {
            name: getattr(p, "_attention_backend", None) for name, p in installed.items()
        }
        # Layers where fuse_qkv_projections() set a fused processor over this call's: what
        # disable puts there (the model's projections stay fused until unfuse_qkv_projections).
        self._fused: dict = {}
        # [pipeline, PAG processors found there, entropy-attn's] for a PAG pipeline (see enable)
        self._pag: list | None = None
        self.positions = "stock"
        self.redilate = False
        self._fixes: list = []  # hooks and patches of positions= / redilate=, removable

    def __getstate__(self) -> dict:
        # A copy of the denoiser (copy.deepcopy, pickle) is not part of the PAG pipeline.
        return {**self.__dict__, "_pag": None}

    def _undo_pag(self, later) -> None:
        if self._pag is None:
            return
        pipe, found, ours = self._pag
        self._pag = None
        if getattr(pipe, "_pag_attn_processors", None) is ours:
            pipe._pag_attn_processors = found
            return
        for handle in later:  # a later enable wrapped these: it restores what this one found
            if handle._pag is not None and handle._pag[1] is ours:
                handle._pag[1] = found
                return

    def _retake_fused(self, originals: dict) -> None:
        for name, mine in self.installed.items():
            module = self._modules[name]
            fused = module.processor
            saved = originals.get(f"{name}.processor")
            fused_kind = type(fused).__name__.startswith("Fused")  # fuse_qkv_projections()
            if saved is mine and fused_kind and replacement_for(fused) is type(mine):
                self._fused[name] = fused
                module.set_processor(mine)

    def layer_module(self, name: str) -> torch.nn.Module:
        """The attention module of an installed layer (qualified name)."""
        return self._modules[name]

    def attach_pag(self, pipe, found: tuple, ours: tuple) -> None:
        """Remember the PAG processors this call put on ``pipe`` (``ours``) over ``found``, so
        that :meth:`disable` gives ``found`` back."""
        self._pag = [pipe, found, ours]

    def add_fixes(self, removables: list) -> None:
        """Hooks and patches of ``positions=`` / ``redilate=`` (``.remove()``) that
        :meth:`disable` removes."""
        self._fixes += removables

    def newest_with(self, attribute: str) -> bool:
        """Whether this handle is in force and the newest one in force that sets ``attribute``
        (a position preset, re-dilation): nested calls override, and the outer one resumes."""
        state = DenoiserState.of(self.denoiser)
        if state is None or self not in state.handles:
            return False
        setting = [h for h in state.handles if getattr(h, attribute) not in ("stock", False)]
        return bool(setting) and setting[-1] is self

    @property
    def original_processors(self) -> dict:
        """Qualified layer name -> the processor the layer held before entropy-attn first
        touched it (what :func:`disable` puts back), for the layers this call replaced."""
        state = DenoiserState.of(self.denoiser)
        if state is None or self not in state.handles:
            return dict(self.previous)
        return {name: state.underlying(name, p) for name, p in self.previous.items()}

    controlnet_handles: tuple[EntropyAttnHandle, ...] = ()  # set by enable
    # Wan 2.2's second expert (pipe.transformer_2), patched by the same call; set by enable.
    expert_handles: tuple[EntropyAttnHandle, ...] = ()

    @property
    def active(self) -> bool:
        """Whether any processor this call installed is installed now (a later enable, or the
        user's own ``set_attn_processor``, may have replaced them all)."""
        state = DenoiserState.of(self.denoiser)
        if state is None or self not in state.handles:
            return False
        state.reconcile()
        return bool(self._fixes) or any(
            self._modules[name].processor is p for name, p in self.installed.items()
        )

    @property
    def scale_active(self) -> bool:
        """Whether the entropy-preserving scale of this call is installed on some layer now."""
        state = DenoiserState.of(self.denoiser)
        if state is None or self not in state.handles:
            return False
        rescaled = set(self.rescaled_layers)
        return any(
            self._modules[name].processor is p
            for name, p in self.installed.items()
            if name in rescaled
        )

    def entropy_rows(self) -> list[dict]:
        """Recorded entropy, as :meth:`EntropyRecorder.rows
        <entropy_attn.integration.recording.EntropyRecorder.rows>`: with ``record_entropy=True`` one
        dict per (step, layer call): step, layer, kind, heads, head_dim, query_tokens, n_tokens,
        train_tokens, scale, entropy (mean nats over batch, heads and queries); with
        ``record_entropy="mean"`` one per layer and call shape, with ``calls`` and ``steps``."""
        return self._need_recorder().rows()

    def entropy_dataframe(self):
        """:meth:`entropy_rows` as a ``pandas.DataFrame`` (needs pandas)."""
        return self._need_recorder().dataframe()

    def reset_entropy(self) -> None:
        """Forget recorded entropy and restart the step count (e.g. before a new generation)."""
        self._need_recorder().reset()

    def _need_recorder(self) -> EntropyRecorder:
        if self.recorder is None:
            raise RuntimeError("entropy was not recorded: use enable(pipe, record_entropy=True)")
        return self.recorder

    def disable(self) -> None:
        """Undo this enable call (harmless if already done).

        A layer that still holds this call's processor gets back the processor it replaced; a
        layer whose processor the user has changed since keeps the user's; a later enable call
        still in force that covered this one's processors will restore what this one replaced.
        The ControlNet handles of this call (:attr:`controlnet_handles`) are undone too.
        """
        for handle in (*self.expert_handles, *self.controlnet_handles):
            handle.disable()
        state = DenoiserState.of(self.denoiser)
        if state is None or self not in state.handles:
            return
        state.reconcile()
        originals = getattr(self.denoiser, "original_attn_processors", None)
        later = state.handles[state.handles.index(self) + 1 :]
        self._undo_pag(later)
        for name, mine in self.installed.items():
            self._pass_on_backend(name, mine, self.previous[name])
            if isinstance(originals, dict) and originals.get(f"{name}.processor") is mine:
                # unfuse_qkv_projections() must not bring this call's processor back later.
                originals[f"{name}.processor"] = self.previous[name]
            module = self._modules[name]
            if module.processor is mine:
                # Under context parallelism the stock processor put back already holds diffusers'
                # config: a generic-path processor's is its stock processor's (read and written
                # through), whether enable_parallelism came before or after enable.
                module.set_processor(self._fused.pop(name, self.previous[name]))
                continue
            for handle in later:
                if handle.previous.get(name) is mine:
                    handle.previous[name] = self.previous[name]
                    break
        if self._hook is not None:
            self._hook.remove()
        for fix in reversed(self._fixes):
            fix.remove()
        self._fixes = []
        state.handles.remove(self)
        if not state.handles:
            state.close()

    def _pass_on_backend(self, name: str, mine, previous) -> None:
        """A backend the user set on ``mine`` while it was installed goes to ``previous``."""
        backend = getattr(mine, "_attention_backend", None)
        if backend != self._backends[name] and hasattr(previous, "_attention_backend"):
            previous._attention_backend = backend

    def __repr__(self) -> str:
        return (
            f"EntropyAttnHandle({type(self.denoiser).__name__}, "
            f"{len(self.installed)} processors replaced, "
            f"{len(self.rescaled_layers)} rescaled, train latent {self.train_latent_size}, "
            f"active={self.active})"
        )
