"""The BLIP-2 Q-Former: learned queries that read the frozen image tokens, plus an optional text branch.

One BERT-style (post-LN) network runs in four modes that differ only in their inputs and self-attention
mask (`attention_mask` below; LAVIS blip2_qformer.py / Qformer.py is the reference):

    query       queries only, bidirectional, cross-attention to the image   -> visual prefix, ITC image side
    text        text only, bidirectional over non-pad tokens, no image        -> ITC text side ([CLS] state)
    multimodal  [queries; text], fully bidirectional                          -> ITM
    causal      [queries; text]: queries see queries only, text sees every   -> ITG
                query and the text before it (UniLM mask)

Self-attention weights are shared by queries and text; cross-attention to the LayerNorm'd image tokens
sits in every `cross_attention_freq`-th layer and acts on query positions only; each layer has a query
FFN and a text FFN. Queries get no position embeddings. Module names follow transformers'
Blip2QFormerModel (`layernorm`, `encoder.layer.N.attention.attention.query`, `intermediate_query`, ...)
so released BLIP-2 weights map onto it key for key (vlm/model/qformer_weights.py).

In the causal mode LAVIS replays the query-only pass's cached keys/values; running [queries; text]
under the UniLM mask computes exactly the same query states, so one pass serves both the visual prefix
(and ITC) and ITG.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vlm.config import BridgeConfig
from vlm.model import qformer_weights
from vlm.model.bridge import Bridge, BridgeOutput

MODES = ("query", "text", "multimodal", "causal")
LAYER_NORM_EPS = 1e-12  # BERT's


def attention_mask(mode: str, n_queries: int, text_mask: torch.Tensor | None) -> torch.Tensor | None:
    """Boolean self-attention mask (B, S, S), True where a row may attend to a column, for the sequence
    [queries; text]. None means "attend everywhere" (the query-only mode)."""
    if mode == "query":
        return None
    if mode not in MODES:
        raise ValueError(f"unknown Q-Former mode '{mode}'; expected one of {MODES}")
    if text_mask is None:
        raise ValueError(f"Q-Former mode '{mode}' needs a text mask")
    text_keys = text_mask.bool()
    b, length = text_keys.shape
    q = 0 if mode == "text" else n_queries
    keys = torch.cat([text_keys.new_ones(b, q), text_keys], dim=1)  # (B, S): padding is never attended
    s = q + length
    mask = keys[:, None, :].expand(b, s, s)
    if mode == "causal":
        allowed = torch.ones(s, s, dtype=torch.bool, device=text_keys.device)
        allowed[:q, q:] = False  # a query never sees the text
        allowed[q:, q:] = torch.tril(allowed[q:, q:])  # text sees earlier text only
        mask = mask & allowed
    return mask


class MultiHeadAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, kv_width: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(kv_width, hidden)
        self.value = nn.Linear(kv_width, hidden)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.heads, d // self.heads).transpose(1, 2)  # (B, heads, N, d_head)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        q, k, v = self._split(self.query(x)), self._split(self.key(memory)), self._split(self.value(memory))
        mask = None if mask is None else mask[:, None]  # broadcast over heads
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return out.transpose(1, 2).flatten(2)


class AddNorm(nn.Module):
    """BERT's SelfOutput / Output: dense, dropout, then LayerNorm of the residual sum."""

    def __init__(self, in_width: int, hidden: int, dropout: float):
        super().__init__()
        self.dense = nn.Linear(in_width, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=LAYER_NORM_EPS)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(F.dropout(self.dense(x), self.dropout, self.training) + residual)


class AttentionBlock(nn.Module):
    def __init__(self, hidden: int, heads: int, kv_width: int, dropout: float):
        super().__init__()
        self.attention = MultiHeadAttention(hidden, heads, kv_width, dropout)
        self.output = AddNorm(hidden, hidden, dropout)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.output(self.attention(x, memory, mask), x)


class Intermediate(nn.Module):
    def __init__(self, hidden: int, inner: int):
        super().__init__()
        self.dense = nn.Linear(hidden, inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class QFormerLayer(nn.Module):
    def __init__(self, cfg: BridgeConfig, vision_width: int, has_cross_attention: bool, text_branch: bool):
        super().__init__()
        h, inner = cfg.hidden_size, int(cfg.hidden_size * cfg.mlp_ratio)
        self.attention = AttentionBlock(h, cfg.num_heads, h, cfg.dropout)
        self.crossattention = AttentionBlock(h, cfg.num_heads, vision_width, cfg.dropout) if has_cross_attention else None
        self.intermediate_query = Intermediate(h, inner)
        self.output_query = AddNorm(inner, h, cfg.dropout)
        self.intermediate = Intermediate(h, inner) if text_branch else None
        self.output = AddNorm(inner, h, cfg.dropout) if text_branch else None

    def forward(self, x: torch.Tensor, n_queries: int, mask: torch.Tensor | None,
                memory: torch.Tensor | None) -> torch.Tensor:
        x = self.attention(x, x, mask)
        queries, text = x[:, :n_queries], x[:, n_queries:]
        parts = []
        if n_queries:
            if self.crossattention is not None:
                queries = self.crossattention(queries, memory, None)
            parts.append(self.output_query(self.intermediate_query(queries), queries))
        if text.shape[1]:
            if self.intermediate is None:
                raise ValueError("this Q-Former has no text branch (bridge.text_branch: false)")
            parts.append(self.output(self.intermediate(text), text))
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]


class QFormerEncoder(nn.Module):
    def __init__(self, cfg: BridgeConfig, vision_width: int, text_branch: bool):
        super().__init__()
        self.layer = nn.ModuleList(
            QFormerLayer(cfg, vision_width, i % cfg.cross_attention_freq == 0, text_branch)
            for i in range(cfg.num_layers)
        )

    def forward(self, x, n_queries, mask, memory):
        for layer in self.layer:
            x = layer(x, n_queries, mask, memory)
        return x


class TextEmbeddings(nn.Module):
    """Word + absolute position embeddings of the text (the LayerNorm is shared with the queries)."""

    def __init__(self, vocab_size: int, hidden: int, max_positions: int):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, hidden)
        self.position_embeddings = nn.Embedding(max_positions, hidden)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        return self.word_embeddings(ids) + self.position_embeddings(positions)[None]


class LMHead(nn.Module):
    """BERT's prediction head: dense, GELU, LayerNorm, then the (tied) word embeddings plus a bias."""

    def __init__(self, hidden: int, vocab_size: int):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=LAYER_NORM_EPS)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, x: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        return F.linear(self.LayerNorm(F.gelu(self.dense(x))), word_embeddings, self.bias)


class QFormer(Bridge):
    """(B, N, D_vision) image tokens -> BridgeOutput with (B, Q, H_llm) visual tokens.

    With `text_vocab_size` > 0 it also owns the text branch and the BLIP-2 stage-1 heads: `vision_proj`,
    `text_proj` (ITC), `itm_head` (ITM) and `lm_head` (ITG, tied to the word embeddings). The word
    embeddings hold one extra row after the tokenizer's vocabulary: the [DEC] token that starts ITG.
    """

    supports_text_branch = True

    def __init__(self, cfg: BridgeConfig, vision_width: int, llm_width: int, text_vocab_size: int = 0):
        super().__init__()
        h = cfg.hidden_size
        self.num_queries = cfg.num_queries
        self.dropout = cfg.dropout
        self.text_branch = text_vocab_size > 0
        self.query_tokens = nn.Parameter(torch.randn(1, cfg.num_queries, h) * 0.02)  # BERT initializer_range
        self.ln_vision = nn.LayerNorm(vision_width)
        self.layernorm = nn.LayerNorm(h, eps=LAYER_NORM_EPS)
        self.encoder = QFormerEncoder(cfg, vision_width, self.text_branch)
        self.language_projection = nn.Linear(h, llm_width)
        if self.text_branch:
            self.dec_token_id = text_vocab_size  # the extra row
            self.embeddings = TextEmbeddings(text_vocab_size + 1, h, cfg.max_text_length)
            self.lm_head = LMHead(h, text_vocab_size + 1)
            self.vision_proj = nn.Linear(h, cfg.itc_dim)
            self.text_proj = nn.Linear(h, cfg.itc_dim)
            self.itm_head = nn.Linear(h, 2)
            self._init_embeddings()

    def _init_embeddings(self) -> None:
        nn.init.normal_(self.embeddings.word_embeddings.weight, std=0.02)
        nn.init.normal_(self.embeddings.position_embeddings.weight, std=0.02)

    # --- the bridge interface ------------------------------------------------------------------------

    @property
    def loss_terms(self) -> tuple[str, ...]:
        return ("itc", "itm", "itg") if self.text_branch else ()

    def shard_units(self) -> list[nn.Module]:
        return list(self.encoder.layer)

    def may_skip_parameters(self, active_terms: set[str]) -> bool:
        return not set(self.loss_terms) <= active_terms  # the ITC, ITM and ITG heads

    def reset_parameters(self) -> None:
        super().reset_parameters()
        with torch.no_grad():
            self.query_tokens.copy_(torch.randn_like(self.query_tokens) * 0.02)
        if self.text_branch:
            self._init_embeddings()
            nn.init.zeros_(self.lm_head.bias)

    def load_pretrained(self, cfg: BridgeConfig) -> None:
        if cfg.init_from:
            qformer_weights.initialise(self, cfg.init_from, cfg.cross_attention_freq)

    @staticmethod
    def describe(cfg: BridgeConfig) -> str:
        text = ", text branch (ITC/ITM/ITG)" if cfg.text_branch else ""
        return f"BLIP-2 Q-Former, {cfg.num_queries} queries, {cfg.num_layers} layers, width {cfg.hidden_size}{text}"

    # --- the four modes --------------------------------------------------------------------------

    def _run(self, mode: str, image_tokens: torch.Tensor | None, ids: torch.Tensor | None,
             text_mask: torch.Tensor | None) -> torch.Tensor:
        parts = []
        n_queries = 0 if mode == "text" else self.num_queries
        if n_queries:
            parts.append(self.query_tokens.expand(image_tokens.shape[0], -1, -1))
        if ids is not None:
            if not self.text_branch:
                raise ValueError("this Q-Former has no text branch (bridge.text_branch: false)")
            parts.append(self.embeddings(ids))
        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        x = F.dropout(self.layernorm(x), self.dropout, self.training)
        memory = self.ln_vision(image_tokens) if n_queries else None
        return self.encoder(x, n_queries, attention_mask(mode, n_queries, text_mask), memory)

    def encode_queries(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """Query-only mode: (B, Q, H) query outputs."""
        return self._run("query", image_tokens, None, None)

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Text-only mode: (B, L, H); position 0 ([CLS]) is the sentence feature."""
        return self._run("text", None, ids, mask)

    def encode_multimodal(self, image_tokens: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ITM mode: (B, Q + L, H), queries and text attending to each other."""
        return self._run("multimodal", image_tokens, ids, mask)

    def decode(self, image_tokens: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ITG mode: (B, Q + L, H). Position 0 of `ids` is replaced by [DEC]; the query rows equal the
        query-only mode's outputs, since queries never see the text."""
        ids = torch.cat([torch.full_like(ids[:, :1], self.dec_token_id), ids[:, 1:]], dim=1)
        return self._run("causal", image_tokens, ids, mask)

    # --- heads -------------------------------------------------------------------------------------

    def image_features(self, query_outputs: torch.Tensor) -> torch.Tensor:
        """(B, Q, H) -> (B, Q, itc_dim), each query L2-normalised."""
        return F.normalize(self.vision_proj(query_outputs), dim=-1)

    def text_features(self, text_outputs: torch.Tensor) -> torch.Tensor:
        """(B, L, H) -> (B, itc_dim) from the [CLS] position, L2-normalised."""
        return F.normalize(self.text_proj(text_outputs[:, 0]), dim=-1)

    def itm_logits(self, multimodal_outputs: torch.Tensor) -> torch.Tensor:
        """(B, Q + L, H) -> (B, 2): the ITM head on every query output, averaged over the queries."""
        return self.itm_head(multimodal_outputs[:, : self.num_queries]).mean(dim=1)

    def lm_logits(self, text_outputs: torch.Tensor) -> torch.Tensor:
        """(B, L, H) -> (B, L, vocab + 1) next-token logits of the ITG decoder."""
        return self.lm_head(text_outputs, self.embeddings.word_embeddings.weight)

    # --- the visual prefix ---------------------------------------------------------------------------

    def project(self, query_outputs: torch.Tensor) -> BridgeOutput:
        return BridgeOutput(visual_tokens=self.language_projection(query_outputs), hidden=query_outputs)

    def forward(self, image_tokens: torch.Tensor, text_embeds: torch.Tensor | None = None,
                text_mask: torch.Tensor | None = None) -> BridgeOutput:
        """The LLM prefix from the query-only mode (the prompt is not read: BLIP-2, not InstructBLIP)."""
        return self.project(self.encode_queries(image_tokens))


BRIDGE = QFormer
