"""Dataclass configs, one per concern, loaded from YAML with dotted command-line overrides.

Validation is strict and happens before anything heavy is built: an unknown key, a wrong type, an
impossible value or a missing file raises `ConfigError` with one line naming the culprit.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from data_prep.filters import FilterConfig, validate_filters
from data_prep.translate import TranslateConfig, validate_translate


class ConfigError(ValueError):
    """A config problem; the message is one line naming the key or path."""


class InputError(ConfigError):
    """A bad input file (corrupt weights, an unreadable image); the message is one line naming it."""


@dataclass
class VisionConfig:
    # An open_clip model name (built-in, or one registered from `model_config_dir`), or "local-dir:PATH".
    name: str = "ViT-B-16"
    # An open_clip pretrained tag ("openai", "laion2b_s34b_b88k"), a local checkpoint file, or "" for none.
    pretrained: str = ""
    # Extra folder of open_clip model JSONs registered with `open_clip.add_model_config`.
    model_config_dir: str = ""
    # A safetensors file of visual-tower weights, loaded strictly after the model is built (the layout
    # `VisionLLM.save_pretrained` writes); when set, `pretrained` must be empty.
    visual_weights: str = ""
    # Block whose output tokens feed the bridge; -1 is the last, -2 the second-last (BLIP-2 uses -2).
    layer: int = -1
    # Keep the CLS token in front of the patch tokens.
    include_cls: bool = True


@dataclass
class BridgeConfig:
    """The bridge between image tokens and the LLM. `type` picks qformer | moe | mlp; each reads only the
    keys of its own section below, so switching type changes nothing else in a config."""

    type: str = "qformer"
    dropout: float = 0.1
    # --- qformer (BLIP-2) ---
    num_queries: int = 32
    hidden_size: int = 768
    num_layers: int = 6
    num_heads: int = 12
    # Cross-attention to the image tokens in every `cross_attention_freq`-th layer (BLIP-2: 2).
    cross_attention_freq: int = 2
    mlp_ratio: float = 4.0
    # A BERT-family checkpoint (BERT, mBERT, XLM-R; folder or hub id) whose weights initialise the
    # Q-Former (text FFN copied into the query FFN), or a Blip2ForConditionalGeneration checkpoint whose
    # Q-Former, query tokens and language projection are imported. "": random init.
    init_from: str = ""
    # Build the text branch (embeddings, text FFNs, ITC/ITM/ITG heads): needed for the BLIP-2 stage-1
    # losses and for ITC retrieval; without it the Q-Former is the query branch only (stage 2, mBLIP).
    text_branch: bool = False
    # Tokenizer of the text branch; "" uses `init_from` when it is a BERT-family checkpoint, else the LLM's.
    tokenizer: str = ""
    max_text_length: int = 32
    itc_dim: int = 256  # BLIP-2's vision_proj / text_proj width
    # --- mlp (LLaVA mlp2x_gelu) and moe (Parrot) ---
    projector_hidden: int = 0  # width of the 2-layer projection's hidden layer; 0: the LLM width
    num_experts: int = 6
    expert_hidden: int = 0  # SwiGLU inner width of each expert; 0: the LLM width
    top_k: int = 0  # 0: dense softmax mixture over all experts (Parrot); k: keep the k largest weights
    # identity: out = V + sum_e w_e E_e(V) with zero-initialised expert outputs, so a fresh MoE passes the
    # projection through unchanged. parrot: out = sum_e w_e E_e(V) + parrot_residual * V, random experts.
    moe_init: str = "identity"
    parrot_residual: float = 0.1


@dataclass
class LLMConfig:
    # A transformers model id or a local folder; the tokenizer is read from the same place unless set.
    name: str = "bigscience/bloomz-560m"
    tokenizer: str = ""
    kind: str = "causal"  # causal | seq2seq
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16: the dtype the frozen weights are loaded in
    lora_r: int = 0  # 0 disables LoRA
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: str = "all-linear"  # "all-linear" or a comma-separated list of module names
    # Train the (tied) input embedding table too. A text-only LM gives interchangeable attribute words
    # (colours, shapes) near-identical embeddings; see shared/reference/demo_feasibility.md section 4.
    train_embeddings: bool = False
    max_length: int = 64  # prompt + target tokens, truncated beyond
    # The LM's logits and cross-entropy only at labelled positions, in vocabulary-bounded chunks (the same loss,
    # vlm/model/lm_loss.py); false, or an architecture it does not know: transformers' loss over every position.
    labelled_logits: bool = True
    trust_remote_code: bool = False


@dataclass
class LossConfig:
    """Each term is logged under its own name; a weight of 0 switches a term off."""

    lm_weight: float = 1.0  # next-token loss of the LLM on captions and answers
    # CG-VLM-style: pooled visual tokens vs the LLM's input embeddings of the caption tokens.
    contrastive_weight: float = 1.0
    contrastive_dim: int = 256
    init_temperature: float = 0.07
    # The learnable logit scales are clamped to [1, max_logit_scale] (CLIP caps it at 100).
    max_logit_scale: float = 100.0
    # BLIP-2 stage-1 losses of the Q-Former's text branch (bridge.text_branch: true).
    itc_weight: float = 0.0  # image-text contrastive, max over queries
    itm_weight: float = 0.0  # image-text matching with hard negatives sampled from the ITC softmax
    itg_weight: float = 0.0  # image-grounded generation through the query prefix
    itc_label_smoothing: float = 0.1
    itg_label_smoothing: float = 0.1
    # Switch-style load balancing of the MoE router (0: off).
    moe_balance_weight: float = 0.0
    # Per-language weights of each example in every example-level term (lm, contrastive, itc, itm, itg), e.g.
    # {si: 2.0}: a Sinhala caption or answer counts twice in each term's mean. Unnamed languages weigh 1.
    language_weights: dict[str, float] = field(default_factory=dict)
    # Up-weight the languages whose validation LM loss lags: a validation before the first step is the baseline;
    # after each later one w_L = (r_L / mean r)^lagging_boost with r_L = loss_L / baseline_L (the languages that
    # fell least weigh most), clipped to [1/lagging_max_weight, lagging_max_weight], times language_weights;
    # 0: off. Needs data.val and train.eval_every; the weights are logged and kept in checkpoints.
    lagging_boost: float = 0.0
    lagging_max_weight: float = 4.0


@dataclass
class DataConfig:
    # Shard lists: a list of paths/globs/brace patterns ("data/train-{000000..000099}.tar"),
    # or a folder holding a manifest.json written by `vlm prep`.
    train: list[str] = field(default_factory=list)
    val: list[str] = field(default_factory=list)
    languages: list[str] = field(default_factory=lambda: ["en"])
    tasks: list[str] = field(default_factory=lambda: ["caption", "vqa"])
    # Relative weight of each task when sampling what a training example teaches.
    task_weights: list[float] = field(default_factory=lambda: [0.4, 0.6])
    image_size: int = 224
    num_workers: int = 2
    shuffle_buffer: int = 1000  # samples per worker, shuffled before decoding
    # Each worker draws its shards with replacement from the whole list (seeded by seed, rank and worker, so
    # still deterministic and resumable) instead of splitting the list over ranks x workers; allows fewer
    # shards than ranks x workers.
    resampled: bool = False
    # Temperature of language sampling: the target mix is q_L ∝ n_L^alpha, n_L the training samples holding
    # language L (manifest.json counts.train.languages). 1 keeps the data's natural mix, 0 makes languages
    # uniform. 0.3 as in XLM-R and mT5: low-resource languages are up-sampled (natural shares, as mBLIP uses,
    # starve them) without repeating their few samples as often as a uniform mix would. Data translated into
    # every language is unaffected: each sample then teaches L with probability q_L, nothing is dropped.
    language_alpha: float = 0.3
    # Prompt templates per language and task (YAML, see vlm/data/templates.yaml), laid over the packaged ones;
    # "": the packaged file alone.
    templates: str = ""
    # Training picks one of a language's templates per example; false: always the first (the one evaluation
    # uses), for a small LM that was pre-trained on those prompts alone.
    template_variants: bool = True
    # A feature cache written by `vlm prep features` (vlm/data/features.py): training reads the frozen encoder's
    # tokens from it instead of decoding and encoding the images; it must have been made by the config's encoder
    # (name, weights, layer, image size, include_cls), or training stops in one line. "": off, pixels.
    features: str = ""
    # Length-grouped batching (vlm/data/length_grouping.py): the examples of each window of this many batches are
    # sorted by length and cut into batches of neighbours (less padding), in a shuffled order. 0: off.
    group_by_length: int = 0


@dataclass
class TrainConfig:
    output_dir: str = "runs/train"
    seed: int = 0
    batch_size: int = 32  # per rank, per micro-step
    grad_accum: int = 1
    max_steps: int = 1000  # optimizer steps
    max_minutes: float = 0.0  # >0: also stop (and save) once this much wall time has passed
    lr: float = 1e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    precision: str = "auto"  # auto (bf16 autocast on GPU, fp32 on CPU) | fp32 | bf16
    # How ranks share the work (vlm/train/strategies/): single (one process), ddp (replicated model, averaged
    # gradients), fsdp2 (parameters, gradients and optimizer state sharded per LM block and bridge unit);
    # auto: ddp under torchrun with several ranks, single otherwise.
    strategy: str = "auto"
    # Recompute each LM block and bridge unit in the backward pass instead of keeping its activations.
    activation_checkpointing: bool = False
    # A resumed run must have the global batch (ranks x batch_size x grad_accum) it was saved with; a run resumed
    # on fewer GPUs then raises grad_accum. false: accept another global batch.
    keep_global_batch: bool = True
    log_every: int = 10
    eval_every: int = 0  # validation loss every N steps; 0 disables it
    benchmark_every: int = 0  # the `eval` section's benchmark every N steps (and at the end); 0 disables it
    save_every: int = 0  # 0: only the final checkpoint
    keep_checkpoints: int = 2
    progress: bool = True
    tensorboard: bool = True
    threads: int = 0  # torch intra-op threads; 0 leaves torch's default
    # A step whose loss or gradient is not finite is skipped (no optimizer step) and counted as
    # `nonfinite_steps`; this many in a row stop the run with its last good checkpoint kept. 0: never stop.
    max_nonfinite: int = 20
    # Seconds a rank waits in a collective for the others before it gives up (a rank that died or hangs);
    # the survivors then exit naming the rank that stopped answering.
    dist_timeout_s: float = 600.0


@dataclass
class EvalConfig:
    # What `vlm eval` and the trainer's periodic evaluation score (`vlm eval --suite/--data-root/--langs`
    # override these): a suite of eval.suites, the folder holding its published files ("" with the demo
    # suite: data.val), and languages ([]: data.languages for the demo suite, every language otherwise).
    suite: str = "demo"
    data_root: str = ""
    languages: list[str] = field(default_factory=list)
    split: str = ""  # "": the suite's reference split; eval.suites.loading.SPLITS lists the splits of each suite
    max_images: int = 0  # 0: every image of the suite
    ks: list[int] = field(default_factory=lambda: [1, 5, 10])
    # Decoding, shared by captioning and VQA: greedy (num_beams 1) or beam search, always with the KV cache.
    max_new_tokens: int = 32  # captions
    vqa_max_new_tokens: int = 10  # short answers (mBLIP's setting)
    num_beams: int = 1
    length_penalty: float = 1.0  # beam search only; mBLIP uses -1 for VQA to favour short answers
    # Instructions in the target language ("target", like the training templates) or in English naming the
    # language ("en": "Caption in German:", Centurio's style).
    prompt_language: str = "target"
    caption_tokenizer: str = ""  # "" : each language's default (char for zh/ja/th, whitespace otherwise)
    batch_size: int = 64
    num_workers: int = 2  # image decoding processes
    precision: str = "auto"  # auto (bf16 autocast on GPU, fp32 on CPU) | fp32 | bf16
    samples_per_language: int = 3  # sample captions kept in results.json
    # first: each image's first caption only (CLIP_benchmark's XM3600 protocol, 1:1 pairs); all: every caption
    # (an image hits i2t when any of its captions is in the top k); auto: the suite's reference protocol.
    retrieval_captions: str = "auto"
    # BLIP-2 protocol: re-score each query's top-k ITC candidates with the ITM head (Q-Former with a
    # text branch only); 0 ranks by ITC alone.
    itm_rerank_k: int = 0
    # MEXA-style cross-lingual alignment (eval/alignment.py) on up to this many parallel caption pairs per
    # language (0: off), from the LLM's hidden states at alignment_layer (1..depth; -1 the last; 0 the middle).
    alignment_pairs: int = 256
    alignment_layer: int = 0


@dataclass
class DemoConfig:
    """Settings of `vlm demo` only: how big the synthetic data is and how the demo makes its own
    "pretrained" parts, since none can be downloaded. The demo writes the data into the folder that
    `data.train` names, the CLIP into the `local-dir:` of `vision.name` and the LM into `llm.name`."""

    seed: int = 0
    n_train: int = 20000
    n_val: int = 300
    clip_model: str = "demo-tiny-vit"  # an open_clip architecture, from vision.model_config_dir
    clip_batch_size: int = 64
    clip_lr: float = 5e-4
    clip_steps: int = 300
    tokenizer_vocab_size: int = 2048
    lm_hidden_size: int = 160
    lm_layers: int = 4
    lm_heads: int = 4
    lm_batch_size: int = 64
    lm_lr: float = 2e-3
    lm_steps: int = 300


@dataclass
class PrepConfig:
    """`vlm prep translate`: the MT backend and the quality filters of its outputs (data_prep owns both)."""

    translate: TranslateConfig = field(default_factory=TranslateConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)


@dataclass
class Config:
    vision: VisionConfig = field(default_factory=VisionConfig)
    bridge: BridgeConfig = field(default_factory=BridgeConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    prep: PrepConfig = field(default_factory=PrepConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")


BRIDGE_TYPES = ("qformer", "moe", "mlp")
MOE_INITS = ("identity", "parrot")
RETRIEVAL_CAPTIONS = ("auto", "first", "all")
SUITES = ("demo", "xm3600", "xgqa", "maxm", "multi30k", "xflickrco", "coco")  # eval.suites
PROMPT_LANGUAGES = ("target", "en")
LLM_KINDS = ("causal", "seq2seq")
TASKS = ("caption", "vqa", "match")  # match: caption matching, yes/no (mBLIP v2)
PRECISIONS = ("auto", "fp32", "bf16")
STRATEGIES = ("auto", "single", "ddp", "fsdp2")  # vlm/train/strategies/<name>.py, auto resolved at launch
DTYPES = ("auto", "float32", "bfloat16", "float16")
FEATURE_DTYPES = ("bf16", "fp16", "fp32")  # what `vlm prep features` stores tokens in


# --- loading -------------------------------------------------------------------------------------


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read YAML (or JSON) at `path`, apply `key.sub=value` overrides, build and validate a Config."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    for item in overrides or []:
        _apply_override(raw, item)
    cfg = _build(Config, raw, "")
    validate(cfg)
    return cfg


def config_from_dict(raw: dict[str, Any]) -> Config:
    cfg = _build(Config, raw, "")
    validate(cfg)
    return cfg


def _apply_override(raw: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like section.key=value")
    dotted, _, text = item.partition("=")
    keys = dotted.strip().split(".")
    node = raw
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{dotted}': '{key}' is not a section")
    # YAML parsing gives numbers, booleans and [lists] their types; plain words stay strings.
    node[keys[-1]] = yaml.safe_load(text) if text.strip() else ""


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"'{prefix.rstrip('.') or 'config'}' must be a mapping")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            raise ConfigError(f"unknown config key '{prefix}{key}' (known: {', '.join(sorted(names))})")
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue
        hint = hints[f.name]
        key = prefix + f.name
        if dataclasses.is_dataclass(hint):
            values[f.name] = _build(hint, raw[f.name], key + ".")
        else:
            values[f.name] = _coerce(raw[f.name], hint, key)
    return cls(**values)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is dict:
        key_type, value_type = typing.get_args(hint)
        if not isinstance(value, dict):
            raise ConfigError(f"'{key}' must be a mapping, got {type(value).__name__}")
        return {_coerce(k, key_type, f"{key} key"): _coerce(v, value_type, f"{key}.{k}") for k, v in value.items()}
    if origin is list:
        (item_type,) = typing.get_args(hint)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # `data.languages=en` means ["en"]
        if not isinstance(value, list):
            raise ConfigError(f"'{key}' must be a list, got {type(value).__name__}")
        return [_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"'{key}': union types are not supported in configs")
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"'{key}' must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"'{key}' must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):
            value = _parse_float(value)  # YAML 1.1 reads "3e-4" (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"'{key}' must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"'{key}' must be a string, got {value!r}")
        return value
    raise ConfigError(f"'{key}': unsupported config type {hint}")


def _parse_float(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


# --- validation ----------------------------------------------------------------------------------


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _choice(value: str, choices: tuple[str, ...], key: str) -> None:
    _check(value in choices, f"'{key}' is '{value}'; choose one of: {', '.join(choices)}")


def validate(cfg: Config) -> None:
    """Check values that types cannot: choices, ranges, languages, and that local paths exist."""
    from data_prep.languages import (
        get_language,  # local: data_prep imports nothing from vlm
    )

    b, llm, loss, data, train = cfg.bridge, cfg.llm, cfg.loss, cfg.data, cfg.train
    _choice(b.type, BRIDGE_TYPES, "bridge.type")
    _check(0.0 <= b.dropout < 1.0, "'bridge.dropout' must be in [0, 1)")
    _check(b.num_queries >= 1, "'bridge.num_queries' must be >= 1")
    _check(b.num_layers >= 1, "'bridge.num_layers' must be >= 1")
    _check(b.num_heads >= 1 and b.hidden_size % b.num_heads == 0,
           f"'bridge.hidden_size' ({b.hidden_size}) must be divisible by 'bridge.num_heads' ({b.num_heads})")
    _check(b.cross_attention_freq >= 1, "'bridge.cross_attention_freq' must be >= 1")
    _check(b.max_text_length >= 4, "'bridge.max_text_length' must be >= 4")
    _check(b.itc_dim >= 1, "'bridge.itc_dim' must be >= 1")
    _check(b.projector_hidden >= 0 and b.expert_hidden >= 0, "'bridge.projector_hidden' and 'bridge.expert_hidden' "
           "must be >= 0 (0: the LLM width)")
    _check(b.num_experts >= 1, "'bridge.num_experts' must be >= 1")
    _check(0 <= b.top_k <= b.num_experts, f"'bridge.top_k' must be in [0, bridge.num_experts={b.num_experts}]")
    _choice(b.moe_init, MOE_INITS, "bridge.moe_init")
    _choice(llm.kind, LLM_KINDS, "llm.kind")
    _choice(llm.dtype, DTYPES, "llm.dtype")
    _check(llm.lora_r >= 0, "'llm.lora_r' must be >= 0")
    _check(llm.max_length >= 4, "'llm.max_length' must be >= 4")
    _check(llm.lora_targets == "all-linear" or all(t.strip() for t in llm.lora_targets.split(",")),
           f"'llm.lora_targets' is '{llm.lora_targets}': use all-linear or module names separated by commas")
    weights = {name: getattr(loss, name) for name in
               ("lm_weight", "contrastive_weight", "itc_weight", "itm_weight", "itg_weight", "moe_balance_weight")}
    for name, weight in weights.items():
        _check(weight >= 0, f"'loss.{name}' must be >= 0")
    _check(sum(weights.values()) > 0, "every 'loss.*_weight' is 0: nothing to train")
    # Terms of another bridge type are simply inactive (so `bridge.type` alone switches a config); within
    # the Q-Former they must be consistent.
    if b.type == "qformer":
        for name in ("itc_weight", "itm_weight", "itg_weight"):
            _check(weights[name] == 0 or b.text_branch, f"'loss.{name}' needs bridge.text_branch=true")
        _check(loss.itm_weight == 0 or loss.itc_weight > 0,
               "'loss.itm_weight' samples its hard negatives from the ITC similarities: set 'loss.itc_weight' > 0")
    for name in ("itc_label_smoothing", "itg_label_smoothing"):
        _check(0 <= getattr(loss, name) < 1, f"'loss.{name}' must be in [0, 1)")
    _check(0 < loss.init_temperature < 1, "'loss.init_temperature' must be in (0, 1)")
    _check(loss.max_logit_scale >= 1.0 / loss.init_temperature,
           "'loss.max_logit_scale' must be >= 1 / 'loss.init_temperature'")
    _check(len(data.languages) > 0, "'data.languages' is empty")
    for lang, weight in loss.language_weights.items():
        _check(lang in data.languages, f"'loss.language_weights' names '{lang}', which is not in data.languages "
               f"({', '.join(data.languages)})")
        _check(weight > 0, f"'loss.language_weights.{lang}' must be > 0")
    _check(loss.lagging_boost >= 0, "'loss.lagging_boost' must be >= 0 (0: off)")
    _check(loss.lagging_max_weight >= 1, "'loss.lagging_max_weight' must be >= 1")
    _check(loss.lagging_boost == 0 or (data.val and train.eval_every > 0),
           "'loss.lagging_boost' follows the per-language validation loss: set data.val and train.eval_every > 0")
    for code in data.languages:
        try:
            get_language(code)
        except ValueError as err:
            raise ConfigError(f"'data.languages': {err}") from None
    _check(len(data.tasks) > 0, "'data.tasks' is empty")
    for task in data.tasks:
        _choice(task, TASKS, "data.tasks")
    _check(len(data.task_weights) == len(data.tasks),
           f"'data.task_weights' has {len(data.task_weights)} entries for {len(data.tasks)} tasks")
    _check(all(w >= 0 for w in data.task_weights) and sum(data.task_weights) > 0,
           "'data.task_weights' must be >= 0 and not all 0")
    _check(data.image_size >= 8, "'data.image_size' must be >= 8")
    _check(data.num_workers >= 0, "'data.num_workers' must be >= 0")
    _check(data.shuffle_buffer >= 1, "'data.shuffle_buffer' must be >= 1")
    _check(data.group_by_length >= 0, "'data.group_by_length' must be >= 0 (batches per window; 0: off)")
    _check(0.0 <= data.language_alpha <= 1.0,
           "'data.language_alpha' must be in [0, 1] (1: the data's natural language mix, 0: uniform)")
    if data.templates and Path(data.templates).is_file():  # a missing file is check_paths' business
        from vlm.data.templates import (  # local: yaml + data_prep only
            TemplateError,
            load_templates,
        )

        try:
            load_templates(data.templates)
        except TemplateError as err:
            raise ConfigError(f"'data.templates': {err}") from None
    _check(train.batch_size >= 1, "'train.batch_size' must be >= 1")
    _check(train.grad_accum >= 1, "'train.grad_accum' must be >= 1")
    _check(train.max_steps >= 1, "'train.max_steps' must be >= 1")
    _check(train.lr > 0, "'train.lr' must be > 0")
    _check(0 <= train.min_lr_ratio <= 1, "'train.min_lr_ratio' must be in [0, 1]")
    _check(train.warmup_steps >= 0, "'train.warmup_steps' must be >= 0")
    _check(train.grad_clip >= 0, "'train.grad_clip' must be >= 0 (0 disables clipping)")
    _check(train.keep_checkpoints >= 1, "'train.keep_checkpoints' must be >= 1")
    _check(train.max_nonfinite >= 0, "'train.max_nonfinite' must be >= 0 (0: never stop on non-finite steps)")
    _check(train.dist_timeout_s > 0, "'train.dist_timeout_s' must be > 0 (seconds)")
    _choice(train.precision, PRECISIONS, "train.precision")
    _choice(train.strategy, STRATEGIES, "train.strategy")
    _check(all(k >= 1 for k in cfg.eval.ks), "'eval.ks' must be >= 1")
    _check(cfg.eval.itm_rerank_k >= 0, "'eval.itm_rerank_k' must be >= 0")
    _check(cfg.eval.alignment_pairs == 0 or cfg.eval.alignment_pairs >= 2,
           "'eval.alignment_pairs' must be 0 (off) or >= 2 (one pair always retrieves itself)")
    _choice(cfg.eval.retrieval_captions, RETRIEVAL_CAPTIONS, "eval.retrieval_captions")
    _choice(cfg.eval.suite, SUITES, "eval.suite")
    _choice(cfg.eval.prompt_language, PROMPT_LANGUAGES, "eval.prompt_language")
    _choice(cfg.eval.precision, PRECISIONS, "eval.precision")
    for name in ("max_new_tokens", "vqa_max_new_tokens", "num_beams", "batch_size"):
        _check(getattr(cfg.eval, name) >= 1, f"'eval.{name}' must be >= 1")
    _check(cfg.eval.num_workers >= 0 and cfg.eval.max_images >= 0,
           "'eval.num_workers' and 'eval.max_images' must be >= 0")
    _check(train.benchmark_every >= 0, "'train.benchmark_every' must be >= 0")
    _check(cfg.eval.itm_rerank_k == 0 or b.type != "qformer" or (b.text_branch and loss.itm_weight > 0),
           "'eval.itm_rerank_k' re-ranks with the ITM head: set bridge.text_branch=true and loss.itm_weight > 0")
    _check(not (cfg.vision.visual_weights and cfg.vision.pretrained),
           "'vision.visual_weights' and 'vision.pretrained' are both set; keep one")
    _validate_prep(cfg.prep)


def _validate_prep(prep: PrepConfig) -> None:
    from data_prep.languages import validate_languages

    try:
        validate_translate(prep.translate)
        validate_filters(prep.filters)
        if prep.translate.languages:
            validate_languages(prep.translate.languages)
    except ValueError as err:
        raise ConfigError(str(err) if str(err).startswith("'prep.") else f"'prep.translate.languages': {err}") from None
    _check(prep.filters.back_translation_chrf == 0 or prep.translate.backend != "phrase-table",
           "'prep.filters.back_translation_chrf' needs a backend that translates into English (not phrase-table)")


def check_paths(cfg: Config) -> None:
    """Check that every local file the config names exists; run before building a model.

    Separate from `validate` because `vlm demo` makes its parts (the paths its config names) first.
    """
    _check(not cfg.vision.model_config_dir or Path(cfg.vision.model_config_dir).is_dir(),
           f"'vision.model_config_dir': folder not found: {cfg.vision.model_config_dir}")
    if cfg.vision.name.startswith("local-dir:"):
        folder = cfg.vision.name[len("local-dir:"):]
        _check(Path(folder).is_dir(), f"'vision.name': folder not found: {folder}")
    _check_local_path(cfg.vision.pretrained, "vision.pretrained")
    _check_local_path(cfg.vision.visual_weights, "vision.visual_weights")
    _check(not cfg.data.templates or Path(cfg.data.templates).is_file(),
           f"'data.templates': file not found: {cfg.data.templates}")
    _check_local_path(cfg.llm.name, "llm.name")
    _check_local_path(cfg.llm.tokenizer, "llm.tokenizer")
    if cfg.bridge.type == "qformer":
        _check_local_path(cfg.bridge.init_from, "bridge.init_from")
        _check_local_path(cfg.bridge.tokenizer, "bridge.tokenizer")


def fetch_error(key: str, name: str, err: Exception, instead: str = "a local folder") -> ConfigError:
    """What a loader said when it could not read the part `key` names (a folder lacking its files, a hub id it
    could not fetch), in one line; offline and not a local path, what to pass instead."""
    from huggingface_hub import constants  # read at call time, as transformers does

    if constants.HF_HUB_OFFLINE and not Path(name).expanduser().exists():
        return ConfigError(f"'{key}' ({name}): not in the local Hugging Face cache, and HF_HUB_OFFLINE is set: "
                           f"pass {instead}, or unset HF_HUB_OFFLINE to download it")
    return ConfigError(f"'{key}' ({name}): {first_line(err)}")


def first_line(err: Exception) -> str:
    """The first non-empty line of an exception's message (libraries write paragraphs), or its type's name."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def _check_local_path(value: str, key: str) -> None:
    """A value that is not a hub id ("org/name") or a tag names a local path, which must exist."""
    if not value or _HUB_ID.fullmatch(value) or Path(value).expanduser().exists():
        return
    raise ConfigError(f"'{key}': path not found: {value}")


_HUB_ID = re.compile(r"(hf-hub:)?[\w.-]+(/[\w.-]+)?")
