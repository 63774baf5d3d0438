"""Align-then-Unlearn (Spohn et al. 2025, arXiv 2506.13181), as DESIGN.md §2 states it.

1. Align: train the head E to predict, from the LLM's hidden state at the hook layer, the sentence embedding of the
   next k (encoder) tokens. L_align = 1 - cos(ê_t, e_t) over positions with a full window.
2. Unlearn: freeze E, train the LLM so that ê_t moves away from e_unlearn = S(target name):
   L_unlearn = mean_t max(0, cos(ê_t, e_unlearn) - τ), over real (non-padding, full-window) positions.
3. Alternate: unlearn at each τ of a decreasing schedule, re-aligning E between stages.

Where we differ from the reference, for speed with the same losses and gradients: encoder targets are computed once per
run, hook-layer states once per alignment stage (the LLM is frozen then), and the unlearning forward stops at the hook
layer (no logits). Optional and off in the paper's setting: a retain term keeping hook-layer states of other text close
to the original model's (cheap: those states are the alignment cache computed before unlearning).
"""

from __future__ import annotations

import bisect
import contextlib
import time
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ..distributed import shard
from ..engine import Stage
from ..errors import AtuError
from ..head import EmbeddingHead
from ..models import decoder_layers
from ..runs import Run
from ..settings import setting
from .base import Method, register
from .common import (
    OPTIMIZERS,
    LoraSettings,
    add_lora,
    cache_states,
    hidden_at,
    hidden_at_layers,
    lora_params,
    pick_layer,
    row_batches,
)
from .losses import masked_mean, relative_drift, upcast

HEAD_FILES = ("head.safetensors", "head.json")  # the head's weights; its shape, hook layer and thresholds


@dataclass
class ATUConfig(LoraSettings):  # lora: true trains peft adapters in blocks 1..L instead of the weights
    name: str = "atu"
    hook_layer: Optional[int] = setting(
        None,
        "L: the residual stream after block L (hidden_states[L]); None: round(0.9 × layers) (paper: 29 of 32)",
        at_least=1,
    )
    window_tokens: int = setting(8, "k, counted in encoder tokens (paper: 8)", at_least=1)
    head_width: int = setting(768, "the head's width (paper: 768)", at_least=1)
    head_layers: int = setting(6, "the head's causal transformer layers (paper: 6)", at_least=1)
    head_heads: int = setting(8, "attention heads per head layer (paper: 8)", at_least=1)
    head_dropout: float = setting(0.1, "dropout in the head (paper: 0.1)", at_least=0, at_most=1)
    align_steps: int = setting(15000, "first alignment: head-only Adam steps (paper: 15,000)", at_least=0)
    realign_steps: int = setting(1000, "re-alignment between unlearning stages (paper: 1,000)", at_least=0)
    align_lr: float = setting(1e-4, "the head's Adam learning rate (paper: 1e-4)", above=0)
    align_batch_size: int = setting(16, "sequences per alignment step (paper: 16)", at_least=1)
    taus: list[float] = setting(
        [0.9, 0.8, 0.75, 0.7, 0.65, 0.6, 0.5, 0.4, 0.3, 0.2],
        "the hinge thresholds, one unlearning stage each, not increasing (paper's schedule)",
        at_least=-1.0,
        at_most=1.0,
        each=True,
    )
    # absolute: τ as given. quantile: τ_i = the taus[i]-quantile of cos(ê_t, e_unlearn) on the forget corpus, measured
    # once after the first alignment (the paper's MPNet numbers do not transfer to other encoders).
    tau_mode: str = setting(
        "absolute",
        "how taus are read: cosine values, or quantiles of the forget corpus' similarity",
        choices=("absolute", "quantile"),
    )
    unlearn_steps: int = setting(1000, "LLM steps per unlearning stage (paper: 1,000)", at_least=0)
    unlearn_lr: float = setting(3e-4, "the LLM's learning rate (paper: SGD 3e-4)", above=0)
    unlearn_optimizer: str = setting("sgd", "the LLM's optimizer (paper: sgd)", choices=tuple(OPTIMIZERS))
    unlearn_momentum: float = setting(0.0, "SGD momentum (paper: none)", at_least=0, at_most=0.999)
    unlearn_batch_size: int = setting(16, "sequences per unlearning step (paper: 16)", at_least=1)
    unlearn_params: str = setting(
        "all",
        "what unlearning trains: every LLM weight, or blocks 1..L only (not with lora)",
        choices=("all", "below_hook"),
    )
    retain_weight: float = setting(
        0.0, "weight of the hook-state retain term on other targets' text (paper: 0)", at_least=0
    )
    grad_clip: float = setting(1.0, "gradient-norm clip of both the head and the LLM (0: none)", at_least=0)
    # How many stages a target needs, read from the run itself (never from the probes): the gap between the re-aligned
    # head's similarity to the concept on the forget corpus and on other targets' text is what unlearning must close;
    # once it has fallen to this share of its size at the first stage, the remaining stages are skipped.
    stop_gap: float = setting(
        0.0,
        "skip the remaining stages once the forget corpus' excess concept similarity over other targets' text is at "
        "most this share of its first value (0: every stage runs)",
        at_least=0,
        at_most=1,
    )
    # Robustness levers (issue "Gone, not hidden", docs/robustness.md), each off by default until it earns its place.
    sam_rho: float = setting(
        0.0,
        "sharpness-aware unlearning: each step takes its gradient at the weights moved this far (L2) uphill on the "
        "unlearning loss (SAM; about 2x the step cost; 0: off)",
        at_least=0,
    )
    latent_eps: float = setting(
        0.0,
        "latent adversarial unlearning: unlearn against a perturbation of the residual stream after "
        "method.latent_layer, at most this share of each position's norm, that most restores the concept (0: off)",
        at_least=0,
    )
    latent_layer: Optional[int] = setting(
        None, "the block whose output the latent adversary perturbs; None: half the hook layer", at_least=1
    )
    latent_steps: int = setting(2, "the latent adversary's gradient-ascent steps per unlearning step", at_least=1)
    extra_hook_layers: list[int] = setting(
        [],
        "more heads, reading the residual stream after these blocks below the hook layer: each aligned like the "
        "main head, the hinge summed over all heads ([]: the main head only)",
        at_least=1,
        each=True,
    )
    saliency_rows: float = setting(
        0.0,
        "train only this share of weight rows, those whose concept-similarity gradient on the forget corpus is "
        "largest when unlearning starts (SURE-style; pair it with a larger unlearn_lr; 0: every row)",
        at_least=0,
        at_most=1,
    )


# ------------------------------------------------------------------ windows: what each position must predict


@dataclass
class Chunk:
    """One training sequence: LLM token ids and, per position, the text window it predicts (None: no full window)."""

    ids: list[int]
    windows: list[Optional[str]]


def window_spans(llm_char_ends: list[int], enc_offsets: list[tuple[int, int]], k: int):
    """For each LLM position ending at character c: the span of the first k encoder tokens that end after c."""
    enc_ends = [e for _, e in enc_offsets]
    spans = []
    for c in llm_char_ends:
        j = bisect.bisect_right(enc_ends, c)
        spans.append((enc_offsets[j][0], enc_offsets[j + k - 1][1]) if j + k <= len(enc_offsets) else None)
    return spans


def make_chunks(texts: list[str], tokenizer, encoder_tokenizer, k: int, max_length: int) -> list[Chunk]:
    """Split each text into sequences of at most max_length LLM tokens (BOS first when the model has one)."""
    bos = tokenizer.bos_token_id
    room = max_length - (1 if bos is not None else 0)
    chunks = []
    for text in texts:
        llm = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        enc = encoder_tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        enc_offsets = [tuple(o) for o in enc["offset_mapping"] if o[1] > o[0]]
        for start in range(0, len(llm["input_ids"]), room):
            ids = llm["input_ids"][start : start + room]
            ends = [e for _, e in llm["offset_mapping"][start : start + room]]
            if bos is not None:  # BOS "ends" where the chunk's text begins: it predicts the chunk's first k tokens
                ids, ends = [bos] + ids, [llm["offset_mapping"][start][0]] + ends
            spans = window_spans(ends, enc_offsets, k)
            chunks.append(
                Chunk(ids, [text[s:e] if s is not None else None for s, e in (sp or (None, None) for sp in spans)])
            )
    return chunks


class Batchable:
    """Chunks as right-padded tensors: ids, attention mask, window-valid mask, and encoder targets."""

    def __init__(self, chunks: list[Chunk], encode, pad_id: int, device):
        n, T = len(chunks), max(len(c.ids) for c in chunks)
        self.ids = torch.full((n, T), pad_id, dtype=torch.long)
        self.attn = torch.zeros(n, T, dtype=torch.bool)
        self.valid = torch.zeros(n, T, dtype=torch.bool)
        texts = sorted({w for c in chunks for w in c.windows if w is not None})
        index = {t: i for i, t in enumerate(texts)}
        table = encode(texts) if texts else None  # each distinct window encoded once per run
        self.targets = torch.zeros(n, T, table.shape[1] if table is not None else 1)
        for i, c in enumerate(chunks):
            self.ids[i, : len(c.ids)] = torch.tensor(c.ids)
            self.attn[i, : len(c.ids)] = True
            for t, w in enumerate(c.windows):
                if w is not None:
                    self.valid[i, t] = True
                    self.targets[i, t] = table[index[w]]
        self.lengths = self.attn.sum(1)
        for name in ("ids", "attn", "valid", "targets", "lengths"):
            setattr(self, name, getattr(self, name).to(device))
        self.states: Optional[torch.Tensor] = None  # hook-layer states, cached per alignment stage
        self.extra_states: list[torch.Tensor] = []  # the same at each of method.extra_hook_layers

    def __len__(self):
        return self.ids.shape[0]

    def batch(self, rows: torch.Tensor):
        T = int(self.lengths[rows].max())
        return self.ids[rows, :T], self.attn[rows, :T], self.valid[rows, :T], self.targets[rows, :T]


# ------------------------------------------------------------------ losses


def align_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return masked_mean(1 - F.cosine_similarity(upcast(pred), upcast(target).to(upcast(pred).dtype), dim=-1), valid)


def concept_similarity(pred: torch.Tensor, concept: torch.Tensor) -> torch.Tensor:
    """cos(ê_t, e_unlearn) at every position."""
    return F.cosine_similarity(upcast(pred), upcast(concept).to(upcast(pred).dtype).view(1, 1, -1), dim=-1)


def unlearn_loss(pred: torch.Tensor, concept: torch.Tensor, valid: torch.Tensor, tau: float) -> torch.Tensor:
    return masked_mean((concept_similarity(pred, concept) - tau).clamp(min=0), valid)


# ------------------------------------------------------------------ the method


@register("atu")
class ATU(Method):
    Config = ATUConfig
    needs_encoder = True
    data_parallel = True  # runs under `accelerate launch` with several processes (losses are masked_means)
    uses_other_targets = True  # their corpora are alignment data for the head (and the retain term's text)

    @staticmethod
    def validate(cfg) -> None:
        if not cfg.taus:
            raise AtuError("method.taus is empty; give at least one threshold, e.g. method.taus=[0.4,0.3]")
        if cfg.tau_mode == "quantile" and any(not 0.0 <= t <= 1.0 for t in cfg.taus):
            raise AtuError(f"method.taus={list(cfg.taus)} with method.tau_mode=quantile must lie in [0, 1]")
        if any(b > a for a, b in zip(cfg.taus, cfg.taus[1:])):
            raise AtuError(f"method.taus {list(cfg.taus)} must not increase: each stage lowers the threshold")
        if cfg.stop_gap > 0 and len(cfg.taus) < 2:
            raise AtuError(f"method.stop_gap={cfg.stop_gap} decides how many of several stages run; give several taus")
        if cfg.unlearn_momentum and cfg.unlearn_optimizer != "sgd":
            raise AtuError(f"method.unlearn_momentum={cfg.unlearn_momentum} needs method.unlearn_optimizer=sgd")
        if cfg.saliency_rows and cfg.lora:
            raise AtuError("method.saliency_rows picks rows of the model's own weights; it cannot be used with lora")
        if cfg.head_width % cfg.head_heads:
            raise AtuError(
                f"method.head_width={cfg.head_width} must be divisible by method.head_heads={cfg.head_heads}"
            )

    @staticmethod
    def hook_layer(cfg, model) -> int:
        return pick_layer(model, "method.hook_layer", cfg.hook_layer, 0.9)

    @classmethod
    def latent_layer(cls, cfg, model) -> int:
        hook = cls.hook_layer(cfg, model)
        layer = cfg.latent_layer if cfg.latent_layer is not None else max(1, hook // 2)
        if cfg.latent_eps and not 1 <= layer < hook:
            raise AtuError(
                f"method.latent_layer={layer} must lie below the hook layer {hook}; pick one in 1..{hook - 1}"
            )
        return layer

    @classmethod
    def extra_layers(cls, cfg, model) -> list[int]:
        hook = cls.hook_layer(cfg, model)
        layers = sorted(set(cfg.extra_hook_layers))
        if any(not 1 <= layer < hook for layer in layers):
            raise AtuError(
                f"method.extra_hook_layers={list(cfg.extra_hook_layers)} must lie below the hook layer {hook}; "
                f"pick layers in 1..{hook - 1}"
            )
        return layers

    @classmethod
    def check_model(cls, cfg, model) -> None:
        cls.latent_layer(cfg, model)
        cls.extra_layers(cfg, model)

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self.layer = self.hook_layer(cfg, ctx.model)
        self.perturbed_layer = self.latent_layer(cfg, ctx.model)
        self.depths = self.extra_layers(cfg, ctx.model)  # the extra heads' layers
        self.training_data = {
            "forget": f"{len(ctx.forget_texts)} forget-corpus passages",
            "alignment": f"forget corpus + other targets' corpora ({', '.join(ctx.other_targets) or 'none'})",
        }

    # -- data, built once per run
    def prepare(self, say=lambda msg: None) -> None:
        ctx, cfg = self.ctx, self.cfg
        enc = ctx.encoder

        encoded = []  # how many windows, for the log line below

        def encode(texts):
            encoded.append(len(texts))
            with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=ctx.encoder_bf16):
                out = enc.encode(
                    texts, batch_size=ctx.encoder_batch_size, convert_to_tensor=True, show_progress_bar=False
                )
            return out.float().cpu()

        make = lambda texts: Batchable(
            make_chunks(texts, ctx.tokenizer, enc.tokenizer, cfg.window_tokens, ctx.max_length),
            encode,
            ctx.tokenizer.pad_token_id,
            ctx.device,
        )
        if cfg.lora:  # adapters only where the unlearning forward runs: blocks below the hook layer get gradients
            ctx.model = add_lora(ctx.model, cfg, blocks=list(range(self.layer)))
        say(f"encoding {cfg.window_tokens}-token windows once for the run")
        started = time.time()
        self.forget = make(ctx.forget_texts)
        self.retain = make(ctx.retain_texts) if ctx.retain_texts else None
        if cfg.stop_gap > 0 and self.retain is None:
            raise AtuError(
                "method.stop_gap compares the forget corpus with other targets' text; set data.other_targets"
            )
        say(f"encoded {sum(encoded)} windows in {time.time() - started:.0f} s")
        self.concept = encode([ctx.target_name])[0].to(ctx.device)
        d_model = ctx.model.config.get_text_config().hidden_size
        torch.manual_seed(ctx.seed)
        # float32 (a bf16 head trains badly), float64 with a float64 model (the exactness tests)
        dtype = torch.float64 if next(ctx.model.parameters()).dtype == torch.float64 else torch.float32
        shape = (d_model, self.concept.numel(), cfg.head_width, cfg.head_layers, cfg.head_heads)
        self.head = EmbeddingHead(*shape, dropout=cfg.head_dropout).to(ctx.device, dtype)
        self.extra_heads = torch.nn.ModuleList(  # method.extra_hook_layers: one more head per layer, shaped alike
            EmbeddingHead(*shape, dropout=cfg.head_dropout) for _ in self.depths
        ).to(ctx.device, dtype)
        self.head_opt = None  # one Adam state for the head across all alignment stages, as the reference keeps it
        self.retain_states0 = None
        self.states_current = False  # whether the cached hook states are the current model's
        self.thresholds: list[float] = []
        self.first_gap = None  # method.stop_gap: the similarity gap when unlearning started
        self.stopped = ""  # why the remaining stages are skipped (method.stop_gap), once they are
        self.row_masks: Optional[list[torch.Tensor]] = None  # method.saliency_rows: which rows of each weight train
        self.mask_hooks: list = []
        self.drawn: dict = {}  # this step's batch rows: a SAM step computes its loss twice on the same batch

    def aligned_sets(self):
        return [self.forget] + ([self.retain] if self.retain is not None else [])

    # -- stages
    def stages(self) -> list[Stage]:
        cfg = self.cfg
        stages = [
            Stage(
                "align",
                "align",
                cfg.align_steps,
                self._align_params,
                self._head_optimizer,
                self._align_loss,
                setup=self._cache,
                grad_clip=cfg.grad_clip,
                train=[self.head, self.extra_heads],
            )
        ]
        for i in range(len(cfg.taus)):
            stages.append(
                Stage(
                    f"unlearn{i + 1}",
                    "unlearn",
                    cfg.unlearn_steps,
                    self._lm_params,
                    self._lm_optimizer,
                    lambda step, i=i: self._unlearn_loss(i, step),
                    setup=lambda i=i: self._unlearn_setup(i),
                    grad_clip=cfg.grad_clip,
                    evaluate=True,
                    train=[],
                    sam_rho=cfg.sam_rho,
                )
            )
            if i < len(cfg.taus) - 1 and cfg.realign_steps > 0:
                stages.append(
                    Stage(
                        f"realign{i + 1}",
                        "align",
                        cfg.realign_steps,
                        self._align_params,
                        self._head_optimizer,
                        self._align_loss,
                        setup=self._cache,
                        grad_clip=cfg.grad_clip,
                        train=[self.head, self.extra_heads],
                    )
                )
        return stages

    def _align_params(self):
        return list(self.head.parameters()) + list(self.extra_heads.parameters())

    def _head_optimizer(self, params):
        if self.head_opt is None:
            self.head_opt = torch.optim.Adam(params, lr=self.cfg.align_lr)
        return self.head_opt

    def _cache(self) -> dict:
        """The LLM is frozen during alignment: its hook-layer states are computed once per alignment stage."""
        if self.stopped:
            return {"skipped": self.stopped}
        for data in self.aligned_sets():
            data.states = cache_states(self.ctx.model, self.layer, data, self.ctx.infer_batch_size)
            data.extra_states = [cache_states(self.ctx.model, d, data, self.ctx.infer_batch_size) for d in self.depths]
        self.states_current = True
        if self.retain is not None and self.retain_states0 is None:
            self.retain_states0 = self.retain.states  # the original model's states: the retain term's reference
        return {}

    def _sample(self, data: Batchable, n: int) -> torch.Tensor:
        # every process draws the same rows and keeps its share (data parallel; one process keeps all)
        return shard(torch.randint(len(data), (n,), generator=self.gen)).to(data.ids.device)

    def _align_loss(self, step):
        sets = self.aligned_sets()
        sizes = torch.tensor([len(s) for s in sets], dtype=torch.float)
        # a batch drawn uniformly over all aligned chunks, from one set at a time (rows of one padded tensor)
        data = sets[int(torch.multinomial(sizes, 1, generator=self.gen))]
        rows = self._sample(data, self.cfg.align_batch_size)
        _, _, valid, targets = data.batch(rows)
        pred = self.head(data.states[rows, : valid.shape[1]])
        loss = align_loss(pred, targets, valid)
        logs = {"align_loss": loss.item()}
        for head, states in zip(self.extra_heads, data.extra_states):
            loss = loss + align_loss(head(states[rows, : valid.shape[1]]), targets, valid)
        if self.depths:
            logs["align_loss_all_heads"] = loss.item()
        return loss, logs

    def _lm_params(self):
        model = self.ctx.model
        if self.cfg.lora:
            return lora_params(model)
        if self.cfg.unlearn_params == "below_hook":
            return [p for block in decoder_layers(model)[: self.layer] for p in block.parameters()]
        return list(model.parameters())

    def _lm_optimizer(self, params):
        momentum = {"momentum": self.cfg.unlearn_momentum} if self.cfg.unlearn_momentum else {}
        return OPTIMIZERS[self.cfg.unlearn_optimizer](params, lr=self.cfg.unlearn_lr, **momentum)

    @torch.no_grad()
    def similarities(self, data: Batchable) -> torch.Tensor:
        """cos(ê_t, e_unlearn) at every valid position of `data`, under the current model and head. The hook states
        cached by the last alignment stage are used while the model has not changed since (the same batches, so the
        same numbers as a new forward, without its cost)."""
        self.head.eval()
        sims = []
        for rows in row_batches(data, self.ctx.infer_batch_size):
            ids, attn, valid, _ = data.batch(rows)
            cached = self.states_current and data.states is not None
            states = data.states[rows, : ids.shape[1]] if cached else hidden_at(self.ctx.model, self.layer, ids, attn)
            sims.append(concept_similarity(self.head(states), self.concept)[valid])
        return torch.cat(sims)

    def _unlearn_setup(self, i: int) -> dict:
        self.head.eval()
        self.extra_heads.eval()
        for p in self._align_params():
            p.requires_grad_(False)
        if self.stopped:  # nothing changes from here on: no similarity forwards over the corpora
            return {"tau": self.thresholds[i], "tau_setting": float(self.cfg.taus[i]), "skipped": self.stopped}
        sims = self.similarities(self.forget)
        gap = float(sims.mean() - self.similarities(self.retain).mean()) if self.cfg.stop_gap > 0 else None
        self.states_current = False  # unlearning changes the model from here on
        if not self.thresholds:
            if self.cfg.tau_mode == "quantile":
                self.thresholds = [float(torch.quantile(sims, q)) for q in self.cfg.taus]
            else:
                self.thresholds = [float(t) for t in self.cfg.taus]
            self.sim_before = float(sims.mean())
        info = {
            "tau": self.thresholds[i],
            "tau_setting": float(self.cfg.taus[i]),
            "forget_sim_mean": float(sims.mean()),
            "forget_sim_above_tau": float((sims > self.thresholds[i]).float().mean()),
        }
        if self.cfg.saliency_rows:
            if self.row_masks is None:  # chosen once, on the original model
                self.row_masks = self._salient_rows()
            self._mask_gradients()
            info["saliency_rows_trained"] = int(sum(int(m.sum()) for m in self.row_masks))
        if gap is not None:
            self.first_gap = gap if self.first_gap is None else self.first_gap
            info["forget_sim_gap"] = gap
            if i > 0 and gap <= self.cfg.stop_gap * self.first_gap:
                self.stopped = (
                    f"stopped before {i + 1} of {len(self.cfg.taus)} stages: the forget corpus' similarity gap "
                    f"{gap:.4f} is at most {self.cfg.stop_gap:g} x its first {self.first_gap:.4f}"
                )
        return info | ({"skipped": self.stopped} if self.stopped else {})

    def _salient_rows(self) -> list[torch.Tensor]:
        """SURE-style placement (arXiv 2410.16454): rows of the trained weights ranked by the norm of their gradient of
        the forget corpus' mean concept similarity (what unlearning lowers; unlike the hinge, never zero), the top
        method.saliency_rows share over all weights together. A 1-D parameter's entries are rows of one."""
        params, model = self._lm_params(), self.ctx.model
        for p in params:
            p.grad = None
            p.requires_grad_(True)  # the engine sets what trains after this setup; gradients are needed now
        n_valid = int(self.forget.valid.sum())
        for rows in row_batches(self.forget, self.ctx.infer_batch_size):
            ids, attn, valid, _ = self.forget.batch(rows)
            sims = concept_similarity(self.head(hidden_at(model, self.layer, ids, attn)), self.concept)
            (sims[valid].sum() / n_valid).backward()
        norms = [p.grad.flatten(1).norm(dim=1) if p.dim() > 1 else p.grad.abs() for p in params]
        for p in params:
            p.grad = None
            p.requires_grad_(False)
        everything = torch.cat(norms)
        keep = max(1, round(self.cfg.saliency_rows * everything.numel()))
        cut = torch.topk(everything, keep).values[-1]
        return [n >= cut for n in norms]

    def _mask_gradients(self) -> None:
        """Zero the gradient of every row not chosen (once per run; Adam then never moves them)."""
        if self.mask_hooks:
            return
        for p, rows in zip(self._lm_params(), self.row_masks):
            mask = rows.to(p.device, p.dtype).view(-1, *[1] * (p.dim() - 1))
            trains = p.requires_grad
            p.requires_grad_(True)  # torch registers hooks only then; the engine sets what trains after this setup
            self.mask_hooks.append(p.register_hook(lambda grad, mask=mask: grad * mask))
            p.requires_grad_(trains)

    @contextlib.contextmanager
    def _perturbed(self, delta: torch.Tensor):
        """The residual stream after block method.latent_layer, plus delta, for forwards inside the block."""

        def add(_module, _args, output):
            return (output[0] + delta,) + tuple(output[1:]) if isinstance(output, tuple) else output + delta

        handle = decoder_layers(self.ctx.model)[self.perturbed_layer - 1].register_forward_hook(add)
        try:
            yield
        finally:
            handle.remove()

    def latent_adversary(self, ids, attn, valid) -> torch.Tensor:
        """LAU (arXiv 2408.10682) on ATU's hinge: the perturbation of the residual stream after block latent_layer,
        at most latent_eps x each position's norm, that most raises the head's concept similarity, found by
        latent_steps normalised gradient-ascent steps (projected back onto the bound after each)."""
        model, steps = self.ctx.model, self.cfg.latent_steps
        with torch.no_grad():
            clean = hidden_at(model, self.perturbed_layer, ids, attn)
        radius = self.cfg.latent_eps * clean.float().norm(dim=-1, keepdim=True)
        delta = torch.zeros_like(clean, dtype=torch.float32)
        for _ in range(steps):
            delta.requires_grad_(True)
            with self._perturbed(delta):
                sims = concept_similarity(self.head(hidden_at(model, self.layer, ids, attn)), self.concept)
            (grad,) = torch.autograd.grad(masked_mean(sims, valid), delta)
            with torch.no_grad():
                delta = delta + grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-12) * radius * (2.0 / steps)
                delta = delta * (radius / delta.norm(dim=-1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0)
        return delta.detach()

    def _rows(self, name: str, data: Batchable, stage: int, step: int) -> torch.Tensor:
        """This step's rows of `data`, drawn once: a SAM step asks for the same batch twice."""
        key = (name, stage, step)
        if key not in self.drawn:
            self.drawn = {k: v for k, v in self.drawn.items() if k[1:] == key[1:]}
            self.drawn[key] = self._sample(data, self.cfg.unlearn_batch_size)
        return self.drawn[key]

    def _unlearn_loss(self, i: int, step: int):
        tau = self.thresholds[i]
        rows = self._rows("forget", self.forget, i, step)
        ids, attn, valid, _ = self.forget.batch(rows)
        attacked = self._perturbed(self.latent_adversary(ids, attn, valid)) if self.cfg.latent_eps else None
        with attacked or contextlib.nullcontext():
            states = hidden_at_layers(self.ctx.model, [self.layer, *self.depths], ids, attn)
        heads = [self.head, *self.extra_heads]
        loss = sum(unlearn_loss(head(h), self.concept, valid, tau) for head, h in zip(heads, states))
        logs = {"unlearn_loss": loss.item()}
        if self.cfg.retain_weight > 0 and self.retain is not None:
            rrows = self._rows("retain", self.retain, i, step)
            rids, rattn, _, _ = self.retain.batch(rrows)
            drift = relative_drift(
                hidden_at(self.ctx.model, self.layer, rids, rattn), self.retain_states0[rrows, : rids.shape[1]], rattn
            )
            loss = loss + self.cfg.retain_weight * drift
            logs["retain_drift"] = drift.item()
        return loss, logs

    def state_dict(self) -> dict:
        """Besides the sampling generator: the head's Adam state (one across all alignment stages), the thresholds and
        the original model's retain states (computed before the first unlearning stage; the model changes after)."""
        return {
            **super().state_dict(),
            "head_opt": self.head_opt.state_dict() if self.head_opt else None,
            "thresholds": self.thresholds,
            "first_gap": self.first_gap,
            "stopped": self.stopped,
            "sim_before": getattr(self, "sim_before", None),
            "retain_states0": self.retain_states0,
            "row_masks": self.row_masks,
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if state["head_opt"] is not None:
            self._head_optimizer(self._align_params()).load_state_dict(state["head_opt"])
        self.thresholds, self.retain_states0 = state["thresholds"], state["retain_states0"]
        self.first_gap, self.stopped = state.get("first_gap"), state.get("stopped", "")
        self.row_masks = state.get("row_masks")  # the gradient hooks come back with the next stage's setup
        if self.retain_states0 is not None:
            self.retain_states0 = self.retain_states0.to(self.ctx.device)
        if state["sim_before"] is not None:
            self.sim_before = state["sim_before"]

    def modules(self):
        return [self.ctx.model, self.head, self.extra_heads]

    def params(self):
        return self._lm_params()

    def save(self, run: Run) -> None:
        """The head (safetensors), its config, the hook layer and the thresholds used; with LoRA, the adapter."""
        super().save(run)
        extra = {f"extra.{k}": v for k, v in self.extra_heads.state_dict().items()}  # method.extra_hook_layers
        run.save_tensors(HEAD_FILES[0], self.head.state_dict() | extra)
        run.save_json(
            HEAD_FILES[1],
            {
                "head_config": self.head.config,
                "hook_layer": self.layer,
                "extra_hook_layers": self.depths,
                "thresholds": self.thresholds,
                "window_tokens": self.cfg.window_tokens,
            },
        )

    @classmethod
    def representation_layers(cls, run: Run) -> list[int]:
        if not (run / HEAD_FILES[1]).exists():
            return []
        saved = run.read_json(HEAD_FILES[1])
        return [saved["hook_layer"], *saved.get("extra_hook_layers", [])]
