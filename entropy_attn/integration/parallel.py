"""Context parallelism: entropy-attn inside diffusers' Ulysses and ring attention.

With ``model.enable_parallelism(config=ContextParallelConfig(...))`` diffusers splits the token
sequence over ``ring_degree * ulysses_degree`` ranks; every attention call then sees its rank's
shard of queries and keys, and diffusers' templated attention
(``attention_dispatch._templated_context_parallel_attention``) makes it attend over all keys:

- **Ulysses**: an all-to-all trades the sequence shard for a head shard; each rank attends over
  the *whole* sequence for ``heads / ulysses_degree`` heads, and a second all-to-all trades back.
- **Ring**: each rank attends its query shard over one key shard at a time and merges the partial
  outputs with their log-sum-exps.

The scale must come from the global key count ``N = local keys * ring_degree * ulysses_degree``
(:func:`global_key_tokens`), not from the shard. The pieces here are independent of any
processor: :func:`context_parallel_attention` runs entropy-attn's op as the templated attention's
per-shard op (:class:`ShardAttention`), so any processor or dispatcher wrapper that receives
diffusers' ``parallel_config`` can call it with the scale of the global ``N``.

Entropy merges exactly over key shards ``b`` (:func:`merge_attention`): with per-row ``lse_b``,
entropy ``H_b`` and mean logit ``e_b = sum_{j in b} p_j s_j = lse_b - H_b`` (``p`` the softmax
within the shard), ``LSE = logsumexp_b lse_b`` and ``w_b = exp(lse_b - LSE)``::

    H = LSE - sum_b w_b e_b  =  sum_b w_b H_b - sum_b w_b ln w_b

(the second form is what is computed: no difference of two large numbers).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..op.api import dispatch


def merge_attention(
    outs: Sequence[torch.Tensor],
    lses: Sequence[torch.Tensor],
    entropies: Sequence[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Attention over the union of key shards from each shard's attention.

    Args:
        outs: per shard, ``(..., seq_q, head_dim)`` outputs (softmax within the shard).
        lses: per shard, ``(..., seq_q)`` log-sum-exps of the shard's scaled logits.
        entropies: per shard, ``(..., seq_q)`` entropies within the shard (nats), or ``None``.

    Returns:
        ``(out, lse)`` or ``(out, lse, entropy)`` over all keys, in the dtype of the inputs
        (promoted across shards). A row whose ``lse`` is ``-inf`` on every shard gives NaN.
    """
    if len(outs) == 0 or len(outs) != len(lses):
        raise ValueError(
            f"outs and lses must be non-empty and of one length, got {len(outs)} and {len(lses)}"
        )
    lse, weights = _shard_weights(lses)
    out = sum(w[..., None] * o for w, o in zip(weights, outs, strict=True))
    if entropies is None:
        return out, lse
    return out, lse, merge_entropy(lses, entropies)[1]


def _shard_weights(lses: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``LSE = logsumexp_b lse_b`` and the shard weights ``w_b = exp(lse_b - LSE)`` (stacked)."""
    lse_stack = torch.stack(list(lses))
    lse = torch.logsumexp(lse_stack, dim=0)
    return lse, torch.exp(lse_stack - lse)


def merge_entropy(
    lses: Sequence[torch.Tensor], entropies: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(LSE, H)`` over the union of key shards from each shard's ``lse_b`` and entropy ``H_b``
    (``(..., seq_q)`` each): ``H = sum_b w_b H_b - sum_b w_b ln w_b``, which equals
    ``LSE - sum_b w_b e_b`` with the mean logits ``e_b = lse_b - H_b``."""
    if len(lses) == 0 or len(entropies) != len(lses):
        raise ValueError(
            f"entropies must have one entry per shard ({len(lses)}), got {len(entropies)}"
        )
    lse, weights = _shard_weights(lses)
    # ln w_b = lse_b - LSE; a shard of weight 0 adds 0 (not 0 * -inf).
    log_weights = torch.where(weights > 0, torch.stack(list(lses)) - lse, 0.0)
    return lse, (weights * (torch.stack(list(entropies)) - log_weights)).sum(0)


def context_parallel_config(parallel_config):
    """The ``ContextParallelConfig`` of a diffusers ``ParallelConfig`` that splits the sequence
    over more than one rank, else ``None``."""
    config = getattr(parallel_config, "context_parallel_config", None)
    if config is None or cp_degree(parallel_config) <= 1:
        return None
    return config


def cp_degree(parallel_config) -> int:
    """Ranks the sequence is split over (``ring_degree * ulysses_degree``); 1 without context
    parallelism."""
    config = getattr(parallel_config, "context_parallel_config", None)
    if config is None:
        return 1
    return int(config.ring_degree) * int(config.ulysses_degree)


def global_key_tokens(local_key_tokens: int, parallel_config) -> int:
    """``N`` of a call whose keys are split over the context-parallel ranks: the local count
    times the ranks (diffusers' equal split; every rank holds the same number of tokens)."""
    return int(local_key_tokens) * cp_degree(parallel_config)


def check_parallel_config(parallel_config, where: str = "the denoiser") -> None:
    """Refuse the diffusers parallel configurations entropy-attn does not support, naming why."""
    if parallel_config is None:
        return
    if getattr(parallel_config, "tensor_parallel_config", None) is not None:
        raise ValueError(
            f"{where} runs tensor parallelism (enable_parallelism with a TensorParallelConfig): "
            "entropy-attn supports context parallelism (Ulysses, ring) only"
        )
    config = getattr(parallel_config, "context_parallel_config", None)
    if config is None:
        return
    for flag in ("ring_anything", "ulysses_anything"):
        if getattr(config, flag, False):
            raise ValueError(
                f"{where} runs context parallelism with {flag}=True (uneven shards): entropy-attn "
                "counts N as local keys times ranks, which needs diffusers' equal split; use "
                f"{flag}=False"
            )


class ShardAttention:
    """entropy-attn's op as the per-shard attention of diffusers' templated Ulysses/ring
    attention (its ``forward_op``, ``(B, L, H, D)`` tensors), keeping each call's entropy and
    log-sum-exp when asked, so the caller can merge them (:meth:`entropy`).

    Forward only: a backward pass through it raises.
    """

    def __init__(self, backend: str = "auto", return_entropy: bool = False) -> None:
        self.backend = backend
        self.return_entropy = bool(return_entropy)
        self.shards: list[tuple[torch.Tensor, torch.Tensor]] = []  # (entropy, lse), (B, H, L)

    def __call__(
        self,
        ctx,
        query,
        key,
        value,
        attn_mask=None,
        dropout_p: float = 0.0,
        is_causal: bool = False,
        scale: float | None = None,
        enable_gqa: bool = False,
        return_lse: bool = False,
        _save_ctx: bool = True,
        _parallel_config=None,
    ):
        if attn_mask is not None or is_causal or dropout_p or enable_gqa:
            raise ValueError(
                "entropy-attn under context parallelism supports unmasked, non-causal attention "
                "without dropout or GQA"
            )
        q, k, v = (x.transpose(1, 2) for x in (query, key, value))
        want_lse = return_lse or self.return_entropy
        result = dispatch(q, k, v, scale, self.return_entropy, self.backend, return_lse=want_lse)
        if not want_lse:
            return result.transpose(1, 2)
        if self.return_entropy:
            out, entropy, lse = result
            self.shards.append((entropy, lse))
        else:
            out, lse = result
        out = out.transpose(1, 2)
        return (out, lse.transpose(1, 2)) if return_lse else out

    def entropy(self) -> torch.Tensor:
        """The entropy over all key shards of the calls so far (``(B, H, L)``, float32)."""
        if not self.shards:
            raise RuntimeError("no shard recorded its entropy (return_entropy=False?)")
        if len(self.shards) == 1:
            return self.shards[0][0]
        entropies, lses = zip(*self.shards, strict=True)
        return merge_entropy(lses, entropies)[1]

    @staticmethod
    def backward(ctx, grad_out, *args, **kwargs):
        raise NotImplementedError(
            "entropy-attn under context parallelism is forward-only (inference); train with "
            "diffusers' own attention backends"
        )


def context_parallel_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    scale: float | None,
    parallel_config,
    *,
    backend: str = "auto",
    return_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention of this rank's query shard over every rank's keys, with entropy-attn's op.

    Args:
        query, key, value: ``(batch, heads, local tokens, head_dim)``, this rank's shard.
        scale: the softmax scale (from the *global* ``N``: :func:`global_key_tokens`); ``None``
            is ``1/sqrt(head_dim)``.
        parallel_config: diffusers' ``ParallelConfig`` with a context-parallel config of more
            than one rank (what ``enable_parallelism`` gives the processors).
        backend: entropy-attn's op backend (``"auto"``, ``"triton"``, ``"torch"``).
        return_entropy: also return this rank's row entropies over all keys: ``(batch, heads,
            local tokens)`` under ring (merged over key shards by :func:`merge_attention`),
            ``(batch, heads / ulysses_degree, all tokens)`` under Ulysses (each rank holds the
            rows of its heads); :func:`cp_mean` averages them over the ranks.

    Returns:
        ``out`` (``query``'s shape), or ``(out, entropy)``.
    """
    try:
        from diffusers.models.attention_dispatch import _templated_context_parallel_attention
    except ImportError as error:  # a private name of diffusers (0.42.1 tested)
        import diffusers

        raise ImportError(
            "entropy-attn under context parallelism uses diffusers' templated Ulysses/ring "
            "attention (attention_dispatch._templated_context_parallel_attention), which "
            f"diffusers {diffusers.__version__} does not have; tested with 0.42.1"
        ) from error
    op = ShardAttention(backend, return_entropy)
    out = _templated_context_parallel_attention(
        query.transpose(1, 2),
        key.transpose(1, 2),
        value.transpose(1, 2),
        None,
        0.0,
        False,
        scale,
        False,
        False,
        forward_op=op,
        backward_op=ShardAttention.backward,
        _parallel_config=parallel_config,
    ).transpose(1, 2)
    return (out, op.entropy()) if return_entropy else out


def cp_mean(values: torch.Tensor, parallel_config) -> torch.Tensor:
    """The mean of ``values`` over every element on every context-parallel rank (0-d float32;
    every rank holds the same number of elements), by one all-reduce over the ranks."""
    import torch.distributed as dist

    total = values.detach().float().mean()
    config = context_parallel_config(parallel_config)
    if config is None:
        return total
    dist.all_reduce(total, op=dist.ReduceOp.SUM, group=config._flattened_mesh.get_group())
    return total / cp_degree(parallel_config)


__all__ = [
    "ShardAttention",
    "check_parallel_config",
    "context_parallel_attention",
    "context_parallel_config",
    "cp_degree",
    "cp_mean",
    "global_key_tokens",
    "merge_attention",
    "merge_entropy",
]
