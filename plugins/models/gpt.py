"""The `gpt` model: a small decoder-only transformer in the spirit of nanoGPT.

Token and position embeddings, `n_layer` pre-norm blocks of causal self-attention
(F.scaled_dot_product_attention, which picks a fused kernel where there is one) and an MLP, a
final LayerNorm and a head tied to the token embedding (one matrix for both, as in GPT-2).
Input: token ids (N, T) with T <= block_size; output: logits (N, T, vocab_size).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from gradloop.registry import models


class GPTOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vocab_size: int = Field(ge=2, le=1_000_000, description="tokens; must equal the dataset's vocabulary")
    block_size: int = Field(128, ge=1, le=1_000_000, description="longest sequence the model takes")
    n_layer: int = Field(4, ge=1, le=256)
    n_head: int = Field(4, ge=1, le=256)
    n_embd: int = Field(128, ge=1, le=65_536, description="width; a multiple of n_head")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    bias: bool = Field(True, description="biases in Linear layers and LayerNorms")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> GPTOptions:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} is not a multiple of n_head {self.n_head}; change one of them")
        return self


class CausalSelfAttention(nn.Module):
    def __init__(self, o: GPTOptions):
        super().__init__()
        self.n_head = o.n_head
        self.qkv = nn.Linear(o.n_embd, 3 * o.n_embd, bias=o.bias)
        self.proj = nn.Linear(o.n_embd, o.n_embd, bias=o.bias)
        self.dropout = o.dropout
        self.resid_dropout = nn.Dropout(o.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (z.view(n, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        return self.resid_dropout(self.proj(y.transpose(1, 2).contiguous().view(n, t, c)))


class Block(nn.Module):
    def __init__(self, o: GPTOptions):
        super().__init__()
        self.ln_1 = nn.LayerNorm(o.n_embd, bias=o.bias)
        self.attn = CausalSelfAttention(o)
        self.ln_2 = nn.LayerNorm(o.n_embd, bias=o.bias)
        self.mlp = nn.Sequential(
            nn.Linear(o.n_embd, 4 * o.n_embd, bias=o.bias),
            nn.GELU(),
            nn.Linear(4 * o.n_embd, o.n_embd, bias=o.bias),
            nn.Dropout(o.dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, o: GPTOptions):
        super().__init__()
        self.block_size = o.block_size
        self.wte = nn.Embedding(o.vocab_size, o.n_embd)
        self.wpe = nn.Embedding(o.block_size, o.n_embd)
        self.drop = nn.Dropout(o.dropout)
        self.blocks = nn.ModuleList(Block(o) for _ in range(o.n_layer))
        self.ln_f = nn.LayerNorm(o.n_embd, bias=o.bias)
        self.lm_head = nn.Linear(o.n_embd, o.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying: one matrix embeds and predicts
        self.apply(_init_weights)
        # GPT-2's scaled init of the residual projections: the residual stream's variance
        # then does not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith(("attn.proj.weight", "mlp.2.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * o.n_layer))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        if t > self.block_size:
            raise ValueError(f"sequence of {t} tokens is longer than block_size {self.block_size}")
        pos = torch.arange(t, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)


@models.register(
    "gpt",
    options=GPTOptions,
    description="Small decoder-only transformer (nanoGPT-style, tied embeddings): ids (N, T) -> logits (N, T, V).",
    out_option="vocab_size",
)
def build_gpt(*, options: GPTOptions) -> nn.Module:
    return GPT(options)
