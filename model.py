"""Vision-language models for MedAD-R1: the families, loading a policy, reference or judge, LoRA, per-token log-probs.

A model is a hub id, a folder or a PEFT adapter folder (base + adapter, merged). Qwen2.5-VL (the paper's) and the
families researchers fine-tune now share every line below but the table FAMILIES: what one family does its own way.

Imports nothing from the project, so it can be copied alone into another experiment. Beside it: the sampler
(`sampler.py`), bf16 and the fp32 LM head (`precision.py`), data parallel and FSDP2 (`distributed.py`), checkpoints
and logs (`run.py`), the tiny offline models (`tiny.py`).
"""
import glob
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer
from transformers.modeling_outputs import BaseModelOutputWithPooling

DEFAULT_MODEL = "Qwen/Qwen2.5-VL-3B-Instruct"
# LoRA on the language model's attention and MLP projections only: vision towers use the same module names
# (gate_proj, q_proj, ...), so the targets are matched under the language model alone (add_lora).
LORA_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


# ---- the families: what each does its own way (docs/families.md: how to add one) ----

@dataclass(frozen=True)
class Family:
    name: str  # tiny.py --family, FAMILY= of demo.sh
    processor: str  # transformers' processor class, built without a video processor (that needs torchvision)
    image_processor: str  # its PIL image processor (the fast one needs torchvision)
    banned: tuple  # tokens a completion may never hold (vision placeholders: one breaks the next forward)
    vision: tuple  # the backbone's vision modules, frozen unless --train-vision
    vision_blocks: str  # the tower's blocks under the backbone: FSDP2 units, and where --train-vision puts LoRA
    vision_lora: str  # the projections of a tower block that --train-vision wraps in LoRA
    encoder_output: Callable  # per-image features -> mm_encoder_outputs["image"], as the model's forward takes it
    positions: Callable  # (model, inputs) -> position ids of every token, each row's next position
    mask: Callable  # (model, allowed [B, 1, Q, K] bool, the queries' cache slots [Q], the prompt while prefilled)
    #                 -> the attention_mask the sampler's forward takes


def _pooled(features):
    return BaseModelOutputWithPooling(pooler_output=tuple(f[0] for f in features))


def _deepstack(features):
    """Qwen3-VL: the merged tokens, and each deepstack layer's, which the language model adds to its first layers."""
    from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures
    pooled, *deep = (tuple(per_image) for per_image in zip(*features))
    return BaseModelOutputWithDeepstackFeatures(pooler_output=pooled, deepstack_features=list(deep))


def _stacked(features):
    return BaseModelOutputWithPooling(pooler_output=torch.stack([f[0] for f in features]))


def _mrope_positions(model, inputs):
    """M-RoPE (Qwen): [3, B, T] positions, image tokens on their (time, height, width) grid, padding not counted; and
    each row's next position (text positions resume after the image's largest)."""
    positions, deltas = inner(model).get_rope_index(inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"],
                                                    image_grid_thw=inputs.get("image_grid_thw"),
                                                    attention_mask=inputs["attention_mask"])
    return positions, inputs["attention_mask"].sum(1) + deltas.view(-1)


def _padded_positions(model, inputs):
    """1-D positions as transformers' generate gives them to a left-padded row (its first real token at 0, padding at
    0), and each row's next position."""
    mask = inputs["attention_mask"]
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0), mask.sum(1)


def _tensor_mask(model, allowed, queries=None, prompt=None):
    """A 4D mask, which the attention takes as it is: booleans for SDPA, additive floats for eager attention."""
    if model.config._attn_implementation == "eager":
        return torch.zeros(allowed.shape, device=allowed.device).masked_fill(~allowed, torch.finfo(torch.float32).min)
    return allowed


def _windowed_mask(model, allowed, queries, prompt=None):
    """Gemma 3's masks, one a kind of layer, as its own forward builds them: an image's soft tokens attend to each other
    both ways (token_type_ids 1, while the prompt is prefilled), and a sliding-window layer sees the keys of the last
    `sliding_window` cache slots only (padding counts: a left-padded row sees fewer real tokens than alone)."""
    if prompt is not None:
        image = prompt["token_type_ids"] == 1
        start = image & ~torch.nn.functional.pad(image, (1, 0))[:, :-1]
        group = torch.where(image, start.cumsum(1), -1)  # each image's block
        allowed = allowed | ((group[:, :, None] == group[:, None, :]) & image[:, :, None])[:, None]
    keys = torch.arange(allowed.shape[-1], device=allowed.device)
    window = keys > queries[:, None] - model.config.get_text_config().sliding_window  # [Q, K]
    return {"full_attention": _tensor_mask(model, allowed), "sliding_attention": _tensor_mask(model, allowed & window)}


QWEN_VISION = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
FAMILIES = {  # by config.model_type
    "qwen2_5_vl": Family(name="qwen2.5-vl", processor="Qwen2_5_VLProcessor", image_processor="Qwen2VLImageProcessorPil",
                         banned=QWEN_VISION, vision=("visual",), vision_blocks="visual.blocks",
                         vision_lora="qkv|proj|gate_proj|up_proj|down_proj", encoder_output=_pooled,
                         positions=_mrope_positions, mask=_tensor_mask),
    # Qwen3-VL: 16-px patches, a learned position grid in the tower, deepstack features, interleaved M-RoPE
    "qwen3_vl": Family(name="qwen3-vl", processor="Qwen3VLProcessor", image_processor="Qwen2VLImageProcessorPil",
                       banned=QWEN_VISION, vision=("visual",), vision_blocks="visual.blocks",
                       vision_lora="qkv|proj|linear_fc1|linear_fc2", encoder_output=_deepstack,
                       positions=_mrope_positions, mask=_tensor_mask),
    # Gemma 3 (MedGemma): a SigLIP tower pooled into a fixed number of soft tokens an image, attended both ways;
    # sliding-window and global layers; 1-D positions
    "gemma3": Family(name="gemma3", processor="Gemma3Processor", image_processor="Gemma3ImageProcessorPil",
                     banned=("<image_soft_token>", "<start_of_image>", "<end_of_image>"),
                     vision=("vision_tower", "multi_modal_projector"), vision_blocks="vision_tower.encoder.layers",
                     vision_lora="q_proj|k_proj|v_proj|out_proj|fc1|fc2", encoder_output=_stacked,
                     positions=_padded_positions, mask=_windowed_mask),
}


def family(model_or_config) -> Family:
    """The FAMILIES entry of a model (PEFT-wrapped or not) or of its config."""
    config = getattr(model_or_config, "config", model_or_config)
    if config.model_type not in FAMILIES:
        raise ValueError(f"a {config.model_type} model is not of a family this code trains "
                         f"({', '.join(f.name for f in FAMILIES.values())}); evaluate.py answers with it through "
                         "transformers' generate as a baseline row. To train it, add it to model.FAMILIES "
                         "(docs/families.md)")
    return FAMILIES[config.model_type]


def inner(model):
    """The backbone (vision tower, language model) inside a policy, whatever wraps it (PEFT, DDP)."""
    while "language_model" not in model._modules:
        wrapped = [model._modules[k] for k in ("model", "base_model", "module") if k in model._modules]
        if not wrapped:
            raise ValueError(f"no backbone with a language_model inside this {type(model).__name__}")
        model = wrapped[0]
    return model


def vision_modules(model) -> list:
    """The vision tower and projector: frozen unless --train-vision."""
    return [inner(model).get_submodule(name) for name in family(model).vision]


def fsdp_units(model) -> list:
    """The modules FSDP2 shards one by one: the tower's blocks and the language model's layers."""
    return [*inner(model).get_submodule(family(model).vision_blocks), *inner(model).language_model.layers]


# ---- loading ----

def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_precision(device) -> str:
    """bf16 where the device supports it (the paper), fp32 elsewhere (on CPU bf16 is slower than fp32)."""
    return "bf16" if torch.device(device).type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def default_dtype(device) -> torch.dtype:
    return torch.bfloat16 if default_precision(device) == "bf16" else torch.float32


def model_type(path: str, trust_remote_code: bool = False) -> str:
    """config.model_type of a model folder, an adapter folder's base, or a (cached) hub id; for a folder of a processor
    alone, the type whose processor class its processor_config.json names (run.save_processor writes it)."""
    try:
        return AutoConfig.from_pretrained(adapter_base(path) or path, trust_remote_code=trust_remote_code).model_type
    except (OSError, ValueError) as e:
        saved = os.path.join(path, "processor_config.json")
        named = json.load(open(saved)).get("processor_class") if os.path.isfile(saved) else None
        kinds = [kind for kind, own in FAMILIES.items() if own.processor == named]
        if not kinds:
            raise ValueError(f"cannot tell which model {path} is for: no config.json, adapter_config.json or "
                             "processor_class in processor_config.json") from e
        return kinds[0]


def image_only(processor_class):
    """A processor class that takes no video processor, which needs torchvision (not importable with CPU torch)."""
    if "video_processor" not in processor_class.get_attributes():
        return processor_class

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        processor_class.__init__(self, image_processor, tokenizer, None, chat_template=chat_template, **kwargs)
    return type(processor_class.__name__, (processor_class,), {"__init__": __init__})  # saved under the class's name


def load_processor(path: str, trust_remote_code: bool = False, kind: str | None = None):
    """The processor of a hub id or folder, left-padded: AutoProcessor where torchvision exists, else the family's own
    classes without a video processor (`kind`: the model's config.model_type, read from the folder when not given)."""
    try:
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code, padding_side="left")
    except (ImportError, OSError, ValueError, TypeError, AttributeError):
        processor = None
    if not hasattr(processor, "image_processor"):  # no torchvision, or a folder without config.json (an adapter)
        kind = kind or model_type(path, trust_remote_code)
        if kind not in FAMILIES:
            raise ValueError(f"cannot load the processor of {path}: AutoProcessor failed (install torchvision) and a "
                             f"{kind} model is not in model.FAMILIES, whose processor classes need none")
        own = FAMILIES[kind]
        tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left", trust_remote_code=trust_remote_code)
        image_processor = getattr(transformers, own.image_processor).from_pretrained(path)
        saved = os.path.join(path, "processor_config.json")  # the processor's own settings (Gemma's image_seq_length)
        settings = json.load(open(saved)) if os.path.isfile(saved) else {}
        processor = image_only(getattr(transformers, own.processor))(
            image_processor, tokenizer, chat_template=_chat_template(path, tokenizer),
            **{k: v for k, v in settings.items() if k != "processor_class"})
    processor.tokenizer.padding_side = "left"  # batched generation needs left padding
    return processor


def _chat_template(path, tokenizer):
    """The processor's chat template: its own file where the folder has one (chat_template.json, as the hub's
    Qwen2.5-VL ships it, or chat_template.jinja), else the tokenizer's."""
    for name in ("chat_template.json", "chat_template.jinja"):
        file = os.path.join(path, name)
        if os.path.isfile(file):
            text = open(file, encoding="utf-8").read()
            return json.loads(text)["chat_template"] if name.endswith(".json") else text
    return tokenizer.chat_template


def adapter_base(path: str) -> str | None:
    """The base model named by a PEFT adapter folder, or None when `path` is not one."""
    config = os.path.join(path, "adapter_config.json")
    if not os.path.isfile(config):
        return None
    return json.load(open(config))["base_model_name_or_path"]


def load_model(path: str, *, device: str | None = None, dtype: torch.dtype | None = None, merge: bool = True,
               trust_remote_code: bool = False):
    """Load (model, processor) from a hub id, a model folder, or a PEFT adapter folder (base + adapter).

    An adapter is merged into the base weights unless `merge=False` (then a PeftModel is returned).
    """
    device = device or default_device()
    dtype = dtype or default_dtype(device)
    path = os.path.abspath(path) if os.path.isdir(path) else path  # adapters record where their base lives
    base = adapter_base(path) or path
    load_dtype = torch.float32 if base != path and merge else dtype  # merged in fp32, then cast once (merge_lora)
    try:
        model = AutoModelForImageTextToText.from_pretrained(base, dtype=load_dtype, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise OSError(f"cannot load the model {base!r}{' (named by ' + path + '/adapter_config.json)' if base != path else ''}:"
                      f" give a local folder or a hub id that is cached (HF_HUB_OFFLINE=1 needs it cached). {e}") from e
    if base != path:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, path)
        if merge:
            model = merge_lora(model).to(dtype)
    has_processor = glob.glob(os.path.join(path, "tokenizer*")) if os.path.isdir(path) else True
    processor = load_processor(path if has_processor else base, trust_remote_code, model.config.model_type)
    return model.to(device).eval(), processor


def load_judge(path: str, *, device: str | None = None, dtype: torch.dtype | None = None,
               trust_remote_code: bool = False):
    """(model, tokenizer) of the judge F of Eq. 6, frozen: an SFT output or any other adapter folder (merged onto its
    base), a vision-language model (used without an image), or any causal language model, by hub id or folder. The
    caller puts its LM head in fp32 as the policy's (precision.fp32_logits)."""
    device = device or default_device()
    dtype = dtype or default_dtype(device)
    path = os.path.abspath(path) if os.path.isdir(path) else path
    if adapter_base(path):
        model, processor = load_model(path, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
        tokenizer = processor.tokenizer
    else:
        tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left", trust_remote_code=trust_remote_code)
        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
        except ValueError:  # a vision-language model that AutoModelForCausalLM does not map
            model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
    return model.requires_grad_(False).to(device).eval(), tokenizer


def add_lora(model, r: int = 16, alpha: int = 32, dropout: float = 0.05, targets: str = LORA_TARGETS,
             train_vision: bool = False):
    """Wrap the language model's projections (and, with `train_vision`, those of the vision tower's blocks: the
    family's vision_lora) in LoRA adapters."""
    from peft import LoraConfig, get_peft_model
    names = "|".join(t.strip() for t in targets.split(","))
    pattern = rf".*language_model\..*\.({names})"
    if train_vision:
        own = family(model)
        pattern += rf"|.*{own.vision_blocks.replace('.', '[.]')}\..*\.({own.vision_lora})"
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, task_type="CAUSAL_LM", target_modules=pattern)
    return get_peft_model(model, config)


def merge_lora(model):
    """A PEFT model's adapters folded into its base weights in fp32 (the model leaves in fp32). Folded into bf16
    weights, a LoRA delta ~200x smaller than its weight loses about a third to rounding; cast the result once instead,
    as autocast casts a fully fine-tuned policy's fp32 weights: evaluate.py's SFT-only row is then the model Con-GRPO
    starts from."""
    return model.float().merge_and_unload()


# ---- image features, computed once and passed back in ----

def per_image_pixels(prompt: dict) -> tuple:
    """Each prompt's image pixels (one image a prompt): Qwen's patches by their grid, or a row of [n, 3, H, W]."""
    if "image_grid_thw" in prompt:
        return prompt["pixel_values"].split(prompt["image_grid_thw"].prod(1).tolist())
    return prompt["pixel_values"].split(1)


def _tower(model, pixels: dict) -> tuple:
    """Each image's features from the vision tower: a tuple a row (its merged tokens, then Qwen3-VL's deepstack
    features), as FAMILIES' encoder_output takes them back."""
    out = inner(model).get_image_features(**pixels, return_dict=True)
    deep = [list(layer) for layer in getattr(out, "deepstack_features", None) or []]
    return tuple(zip(list(out.pooler_output), *deep))


def image_features(model, prompt: dict) -> tuple:
    """The vision tower's output for each image of `prompt` (no gradient): computed once a step and handed, as
    prompt["image_features"], to every forward that would run the frozen tower again on the same pixels (sampling,
    π_SFT, π_θ)."""
    pixels = {k: prompt[k] for k in ("pixel_values", "image_grid_thw") if k in prompt}
    with torch.no_grad():
        return tuple(tuple(t.detach() for t in image) for image in _tower(model, pixels))


def shared_image_features(model, prompt: dict, images: list) -> dict:
    """`prompt` with each distinct image run through the vision tower once, with its gradient, and its features handed
    to every row that shows it (`images`: a key per row, one image a row, as prompt_batch makes them): the questions
    of one image cost one pass of the tower, not one each."""
    first = {}  # each image's first row
    for row, key in enumerate(images):
        first.setdefault(key, row)
    rows = list(first.values())
    pixels = {"pixel_values": torch.cat([per_image_pixels(prompt)[r] for r in rows])}
    if "image_grid_thw" in prompt:
        pixels["image_grid_thw"] = prompt["image_grid_thw"][rows]
    features = dict(zip(rows, _tower(model, pixels)))
    return {**prompt, "image_features": tuple(features[first[key]] for key in images)}


def model_inputs(model, prompt: dict) -> dict:
    """The keyword arguments of a forward pass over `prompt`: precomputed image features (image_features) go in as
    the model's mm_encoder_outputs instead of pixels."""
    if "image_features" not in prompt:
        return prompt
    inputs = {k: v for k, v in prompt.items() if k not in ("pixel_values", "image_features")}
    return {**inputs, "mm_encoder_outputs": {"image": family(model).encoder_output(prompt["image_features"])}}


def take(prompt: dict, rows: slice) -> dict:
    """Rows of a prompt batch, with their image pixels (and features: one image a prompt)."""
    out = {k: v[rows] for k, v in prompt.items() if k != "pixel_values"}
    if "pixel_values" in prompt:
        out["pixel_values"] = torch.cat(per_image_pixels(prompt)[rows])
    return out


def repeat_prompts(prompt: dict, n: int) -> dict:
    """Repeat each prompt (and its image pixels or features) n times in a row, as sample() groups its rows."""
    out = {k: v.repeat_interleave(n, 0) for k, v in prompt.items() if k not in ("pixel_values", "image_features")}
    if "image_features" in prompt:
        out["image_features"] = tuple(f for f in prompt["image_features"] for _ in range(n))
    if "pixel_values" in prompt:
        out["pixel_values"] = torch.cat([p for p in per_image_pixels(prompt) for _ in range(n)])
    return out


# ---- per-token log-probs of completions ----

def completion_inputs(prompt: dict, completion_ids: torch.Tensor, completion_mask: torch.Tensor) -> dict:
    """Model inputs for prompt + completion (prompt left-padded, completion right-padded)."""
    inputs = dict(prompt)
    inputs["input_ids"] = torch.cat([prompt["input_ids"], completion_ids], 1)
    inputs["attention_mask"] = torch.cat([prompt["attention_mask"], completion_mask.to(prompt["attention_mask"])], 1)
    for key in ("mm_token_type_ids", "token_type_ids"):  # zeros on completion tokens: text, not image (Qwen's M-RoPE
        if key in prompt:  # positions and Gemma's bidirectional image block read them)
            inputs[key] = torch.cat([prompt[key], torch.zeros_like(completion_ids)], 1)
    return inputs


LOGITS_CHUNK = 2**26  # fp32 logits made at once when log-probs are taken: 256 MB (8 rows x 32 positions of 262,208)


def _target_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)


@contextmanager
def head_logprobs(model, targets: torch.Tensor):
    """Inside the block the LM head returns log π(target) [B, T] instead of logits [B, T, V], made a chunk of positions
    at a time (LOGITS_CHUNK) and, under autograd, made again in backward: never [B, T, V] fp32 logits at once (4.3 GB
    at 8 x 512 tokens of Gemma 3's 262k vocabulary). Inside the model's forward, where FSDP2 has gathered the head."""
    head = model.get_output_embeddings()
    plain = head.forward  # the fp32 head of precision.fp32_logits, or the model's own
    step = max(1, LOGITS_CHUNK // (targets.shape[0] * head.weight.shape[0]))

    def chunk(hidden, ids):
        return _target_logprobs(plain(hidden), ids)

    def logprobs(hidden):
        parts = zip(hidden.split(step, 1), targets.split(step, 1))
        if not torch.is_grad_enabled():
            return torch.cat([chunk(h, ids) for h, ids in parts], 1)
        return torch.cat([torch.utils.checkpoint.checkpoint(chunk, h, ids, use_reentrant=False) for h, ids in parts], 1)
    head.forward = logprobs
    try:
        yield
    finally:
        head.forward = plain


def completion_logprobs(model, prompt: dict, completion_ids: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """log π(y_t | I, Q, y_<t) for every completion token: [B, T]. The LM head only at the completion positions, a chunk
    of them at a time (head_logprobs)."""
    inputs = completion_inputs(prompt, completion_ids, completion_mask)
    P, T = prompt["input_ids"].shape[1], completion_ids.shape[1]
    keep = torch.arange(P - 1, P + T - 1, device=completion_ids.device)  # position P-1+t predicts token t
    positions, _ = family(model).positions(model, inputs)  # as generate's, padding aside (Gemma's are not its default)
    with head_logprobs(model, completion_ids):
        return model(**model_inputs(model, inputs), position_ids=positions, logits_to_keep=keep, use_cache=False).logits


def group_logprobs(model, prompt: dict, completion_ids: torch.Tensor, completion_mask: torch.Tensor,
                   group_size: int, share_prompt: bool = True) -> torch.Tensor:
    """completion_logprobs for G completions per prompt (rows grouped as sample() returns them), running each
    prompt, its image included, once: its KV cache is computed once and shared by the group's G completions. With
    share_prompt=False each prompt is repeated G times instead (gradient checkpointing keeps no KV cache): π_θ and
    π_SFT must take the same path, or their log-probs differ in the last bits before any update."""
    G, P = group_size, prompt["input_ids"].shape[1]
    language_model = inner(model).language_model
    if language_model.gradient_checkpointing and language_model.training and share_prompt:
        raise ValueError("group_logprobs: gradient checkpointing keeps no KV cache to share; pass share_prompt=False")
    if not share_prompt:
        return completion_logprobs(model, repeat_prompts(prompt, G), completion_ids, completion_mask)
    text = {k: v.repeat_interleave(G, 0) for k, v in prompt.items() if k not in ("pixel_values", "image_features")}
    full = completion_inputs(text, completion_ids, completion_mask)
    positions, _ = family(model).positions(model, full)  # of the whole sequences, as one forward would take them
    prefill = model(**model_inputs(model, prompt), position_ids=positions[..., ::G, :P], use_cache=True, logits_to_keep=1)
    cache = prefill.cache
    cache.batch_repeat_interleave(G)  # one prompt's keys and values for each of its G completions
    first = _target_logprobs(prefill.logits.repeat_interleave(G, 0), completion_ids[:, :1])  # completion token 0
    with head_logprobs(model, completion_ids[:, 1:]):
        rest = model(input_ids=completion_ids[:, :-1], attention_mask=full["attention_mask"][:, :-1],
                     position_ids=positions[..., P:-1], cache=cache, use_cache=True).logits
    return torch.cat([first, rest], 1)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
