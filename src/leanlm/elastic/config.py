"""``ElasticMoeConfig``: the transformers configuration of the elastic sparse MoE decoder.

ERNIE 5.0 Technical Report (arXiv 2602.04705), §2 (architecture) and §3.3 (elastic training). The report does
not publish layer counts, widths or expert counts; the defaults here are a laptop-scale choice (see
``docs/elastic.md``). Router and balancing follow ERNIE 4.5 / transformers ``Ernie4_5_Moe``: an FP32 softmax
router, top-k on probabilities plus a selection-only correction bias, renormalised weights clamped at
``moe_norm_min``, optional shared experts, auxiliary-loss-free balancing.
"""

from __future__ import annotations

from typing import Any, ClassVar

from transformers import PretrainedConfig


class ElasticMoeConfig(PretrainedConfig):
    """Configuration of :class:`~leanlm.elastic.model.ElasticMoeForCausalLM`.

    Args:
        vocab_size: token vocabulary (byte-level text + grouped-modality codes by default, see ``data.py``).
        hidden_size, num_hidden_layers, num_attention_heads, num_key_value_heads: decoder shape (GQA if kv < q).
        num_experts: E fine-grained routed experts per MoE layer (one shared pool for every modality, §2).
        num_experts_per_tok: default top-k.
        moe_intermediate_size: SwiGLU hidden size of each routed expert.
        num_shared_experts: always-active shared experts (0 disables; ERNIE 4.5 style), each
            ``moe_intermediate_size`` wide, fused into one SwiGLU.
        first_k_dense_layers: the first layers use a dense SwiGLU FFN (``dense_intermediate_size``) instead of MoE.
        moe_norm_min: clamp of the renormalisation denominator (``Ernie4_5_Moe.moe_norm_min``).
        num_mtp_modules: 0 or 1 multi-token-prediction module (predicts token t+2; next-group prediction).
        mtp_loss_weight: weight of the MTP loss (the report gives none; our choice).
        moe_dispatch: ``"auto"`` (inference: ``"grouped"`` where ``torch._grouped_mm`` exists; training or
            no grouped GEMM: ``"gather"`` for calls with few (token, expert) pairs, else ``"sorted"``),
            ``"grouped"`` (pairs sorted on the device + one grouped GEMM per projection, forward only), ``"sorted"`` (sort tokens by expert, one matmul per non-empty expert), ``"bmm"``
            (padded groups, one batched matmul) or ``"gather"`` (gather each token's k experts' weights, one
            batched matmul, no host sync); all give the same result up to float rounding.
        source_layers / source_experts: provenance of an extracted sub-model (which layers / experts of the
            parent were kept); ``None`` for a model that was not extracted.
    """

    model_type = "leanlm_elastic_moe"
    keys_to_ignore_at_inference: ClassVar[list[str]] = ["past_key_values"]

    def __init__(
        self,
        vocab_size: int = 291,
        hidden_size: int = 128,
        num_hidden_layers: int = 4,
        num_attention_heads: int = 4,
        num_key_value_heads: int | None = None,
        head_dim: int | None = None,
        num_experts: int = 16,
        num_experts_per_tok: int = 4,
        moe_intermediate_size: int = 128,
        num_shared_experts: int = 1,
        first_k_dense_layers: int = 0,
        dense_intermediate_size: int = 512,
        moe_norm_min: float = 1e-12,
        rms_norm_eps: float = 1e-6,
        rope_theta: float = 10000.0,
        max_position_embeddings: int = 2048,
        initializer_range: float = 0.02,
        num_mtp_modules: int = 1,
        mtp_loss_weight: float = 0.3,
        moe_dispatch: str = "auto",
        source_layers: list[int] | None = None,
        source_experts: list[list[int]] | None = None,
        tie_word_embeddings: bool = False,
        bos_token_id: int | None = 256,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
        **kwargs: Any,
    ) -> None:
        if num_key_value_heads is None:
            num_key_value_heads = num_attention_heads
        if hidden_size % num_attention_heads and head_dim is None:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_attention_heads {num_attention_heads}")
        if num_attention_heads % num_key_value_heads:
            raise ValueError(f"num_attention_heads {num_attention_heads} is not a multiple of num_key_value_heads {num_key_value_heads}")
        if not 1 <= num_experts_per_tok <= num_experts:
            raise ValueError(f"num_experts_per_tok must be in [1, num_experts={num_experts}], got {num_experts_per_tok}")
        if not 0 <= first_k_dense_layers <= num_hidden_layers:
            raise ValueError(f"first_k_dense_layers must be in [0, {num_hidden_layers}], got {first_k_dense_layers}")
        if num_mtp_modules not in (0, 1):
            raise ValueError(f"num_mtp_modules must be 0 or 1, got {num_mtp_modules}")
        if moe_dispatch not in ("auto", "sorted", "bmm", "gather", "grouped"):
            raise ValueError(f"moe_dispatch must be 'auto', 'sorted', 'bmm', 'gather' or 'grouped', got {moe_dispatch!r}")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = head_dim or hidden_size // num_attention_heads
        self.num_experts = num_experts
        self.num_experts_per_tok = num_experts_per_tok
        self.moe_intermediate_size = moe_intermediate_size
        self.num_shared_experts = num_shared_experts
        self.first_k_dense_layers = first_k_dense_layers
        self.dense_intermediate_size = dense_intermediate_size
        self.moe_norm_min = moe_norm_min
        self.rms_norm_eps = rms_norm_eps
        self.rope_theta = rope_theta
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.num_mtp_modules = num_mtp_modules
        self.mtp_loss_weight = mtp_loss_weight
        self.moe_dispatch = moe_dispatch
        self.source_layers = source_layers
        self.source_experts = source_experts
        super().__init__(
            tie_word_embeddings=tie_word_embeddings, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
            pad_token_id=pad_token_id, **kwargs,
        )

    @property
    def moe_layers(self) -> list[int]:
        """Indices of the layers whose FFN is a MoE (all but the first ``first_k_dense_layers``)."""
        return list(range(self.first_k_dense_layers, self.num_hidden_layers))

    def parameter_counts(self) -> dict[str, int]:
        """Total and activated (per token, default top-k) parameter counts, computed from the shape."""
        d, v = self.hidden_size, self.vocab_size
        attn = d * self.head_dim * (self.num_attention_heads * 2 + self.num_key_value_heads * 2) + 2 * d
        expert = 3 * d * self.moe_intermediate_size
        shared = 3 * d * self.moe_intermediate_size * self.num_shared_experts
        router = d * self.num_experts
        dense = 3 * d * self.dense_intermediate_size
        n_moe = len(self.moe_layers)
        n_dense = self.num_hidden_layers - n_moe
        embed = v * d * (1 if self.tie_word_embeddings else 2) + d
        mtp = (2 * d * d + 3 * d * 2 * self.moe_intermediate_size + 4 * d) if self.num_mtp_modules else 0
        total = embed + mtp + self.num_hidden_layers * attn + n_dense * dense + n_moe * (router + shared + self.num_experts * expert)
        active = embed + self.num_hidden_layers * attn + n_dense * dense + n_moe * (
            router + shared + self.num_experts_per_tok * expert
        )
        return {"total": total, "active": active}
