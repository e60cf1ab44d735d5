"""Qwen2.5-VL for MedAD-R1: loading a policy, reference or judge; LoRA; precision; per-token log-probs.

A model is a hub id, a folder or a PEFT adapter folder (base + adapter, merged).

Imports nothing from the project, so it can be copied alone into another experiment. Beside it: the sampler
(`sampler.py`), data parallel and FSDP2 (`distributed.py`), checkpoints and logs (`run.py`), the tiny offline model
(`tiny.py`).
"""
import glob
import json
import os
import types
from contextlib import contextmanager

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer, Qwen2_5_VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

DEFAULT_MODEL = "Qwen/Qwen2.5-VL-3B-Instruct"
MAX_PIXELS = 1280 * 28 * 28  # 1,003,520 pixels: at most 1,280 image tokens a picture (--max-pixels)
END_OF_TURN = "<|im_end|>"
# LoRA on the language model's attention and MLP projections only: the vision tower uses the same
# module names (gate_proj, ...), so a plain name list would wrap it too.
LORA_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


class ImageOnlyProcessor(Qwen2_5_VLProcessor):
    """Qwen2.5-VL's processor without its video processor, which needs torchvision (not importable with CPU torch)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


# ---- loading ----

def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_precision(device) -> str:
    """bf16 where the device supports it (the paper), fp32 elsewhere (on CPU bf16 is slower than fp32)."""
    return "bf16" if torch.device(device).type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def default_dtype(device) -> torch.dtype:
    return torch.bfloat16 if default_precision(device) == "bf16" else torch.float32


def load_processor(path: str, trust_remote_code: bool = False, max_pixels: int | None = None):
    """The processor of a hub id or folder, left-padded; AutoProcessor where torchvision exists, else the PIL one.
    With max_pixels, larger images are resized down to at most that many pixels (limit_pixels)."""
    try:
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code, padding_side="left")
    except (ImportError, OSError, ValueError, TypeError, AttributeError):
        processor = None
    if not hasattr(processor, "image_processor"):  # no torchvision, or a folder without config.json (an adapter)
        tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left", trust_remote_code=trust_remote_code)
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(path)
        processor = ImageOnlyProcessor(image_processor, tokenizer, chat_template=_chat_template(path, tokenizer))
    processor.tokenizer.padding_side = "left"  # batched generation needs left padding
    if max_pixels:
        limit_pixels(processor, max_pixels)
    return processor


def limit_pixels(processor, max_pixels: int):
    """Images larger than max_pixels are resized down (aspect kept) to at most that many pixels, one image token per
    28x28: a 2048x2048 slice would otherwise be ~5,300 tokens, prefilled for every one of G samples. The processor's
    own bound stays when it is lower (the tiny model's 112x112)."""
    size = processor.image_processor.size
    if "longest_edge" not in size:  # a processor that resizes every image to one size (Gemma 3, LLaVA): no bound to set
        return
    if max_pixels < size["shortest_edge"]:
        raise ValueError(f"--max-pixels {max_pixels} is below the processor's smallest image ({size['shortest_edge']} "
                         "pixels)")
    size["longest_edge"] = min(size["longest_edge"], max_pixels)


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
               trust_remote_code: bool = False, max_pixels: int | None = None):
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
    processor = load_processor(path if has_processor else base, trust_remote_code, max_pixels)
    return model.to(device).eval(), processor


def load_judge(path: str, *, device: str | None = None, dtype: torch.dtype | None = None,
               trust_remote_code: bool = False):
    """(model, tokenizer) of the judge F of Eq. 6, frozen, its LM head in fp32 as the policy's: an SFT output or any
    other adapter folder (merged onto its base, as load_model does), a vision-language model (used without an image),
    or any causal language model, by hub id or folder."""
    from transformers import AutoModelForCausalLM
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
    return fp32_logits(model.requires_grad_(False).to(device).eval()), tokenizer


def add_lora(model, r: int = 16, alpha: int = 32, dropout: float = 0.05, targets: str = LORA_TARGETS,
             train_vision: bool = False):
    """Wrap the language model's projections (and the vision tower's with `train_vision`) in LoRA adapters."""
    from peft import LoraConfig, get_peft_model
    names = "|".join(t.strip() for t in targets.split(","))
    towers = "language_model|visual" if train_vision else "language_model"
    vision_names = "|qkv|proj" if train_vision else ""  # the vision tower's attention is qkv/proj
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, task_type="CAUSAL_LM",
                        target_modules=rf".*({towers}).*\.({names}{vision_names})")
    return get_peft_model(model, config)


def merge_lora(model):
    """A PEFT model's adapters folded into its base weights in fp32 (the model leaves in fp32). Folded into bf16
    weights, a LoRA delta ~200x smaller than its weight loses about a third to rounding; cast the result once instead,
    as autocast casts a fully fine-tuned policy's fp32 weights: evaluate.py's SFT-only row is then the model Con-GRPO
    starts from."""
    return model.float().merge_and_unload()


# ---- precision ----
# --precision bf16 is torch's mixed precision: bf16 compute under autocast, fp32 weights wherever they are trained
# (a bf16 weight of ~1e-2 is resolved to ~4e-5 and cannot take lr-1e-6 updates). Frozen weights that only a LoRA
# adapts stay bf16. A frozen π_SFT copy runs in the policy's regime (fp32 weights, autocast), so that before the
# first update π_θ and π_SFT are the same computation: r_t = 1 and KL = 0 exactly.

def weights_dtype(precision: str, trained: bool) -> torch.dtype:
    """The dtype to load weights in: fp32 unless --precision bf16 and the weights are frozen (a LoRA's base)."""
    return torch.bfloat16 if precision == "bf16" and not trained else torch.float32


def autocast(device, precision: str):
    """bf16 compute for forward passes under --precision bf16 (a no-op under fp32). Only around forward passes:
    autocast caches the bf16 casts of trained weights until its block exits, so a forward after an
    `optimizer.step()` inside the same block would still see the old weights."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16")


def fp32_logits(model):
    """Run the LM head in fp32, outside autocast, so that log-probs (and samples) come from fp32 logits. A bf16
    logit near 20 is resolved only to 0.125: π_θ / π_SFT would carry rounding noise of several percent, as large
    as a sizeable part of ε (MiniMax-M1 fixed its training/inference mismatch the same way). The head (tied to the
    embeddings in Qwen2.5-VL-3B) is kept in fp32; its state-dict names are unchanged."""
    head = model.get_output_embeddings()
    head.float()
    head.forward = types.MethodType(_fp32_linear, head)
    return model


MM_TO_FP32 = ("cuda",)  # devices whose matmul takes bf16 inputs to an fp32 result (torch.mm's out_dtype)


def _fp32_linear(self, hidden):
    """The head's matmul, the same op for π_θ and π_SFT whatever the grad mode and the input's layout (a [:, -1:]
    slice, logits_to_keep=1): a contiguous 2D product, so that log π_θ = log π_SFT to the bit before the first update.
    Under bf16 autocast on a GPU, bf16 inputs with fp32 accumulation into fp32 logits (tensor cores, ~10 TFLOP a
    micro-batch at 3B), the weight's bf16 copy made once per head_cast_once block; elsewhere fp32."""
    shape, device = hidden.shape[:-1], hidden.device.type
    bf16 = device in MM_TO_FP32 and torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.bfloat16
    with torch.autocast(device, enabled=False):
        logits = head_product(hidden.reshape(-1, hidden.shape[-1]), self.weight, bf16,
                              _bf16_weight(self) if bf16 else None)
    return logits.view(*shape, logits.shape[-1])


def head_product(flat: torch.Tensor, weight: torch.Tensor, bf16_inputs: bool, weight_bf16=None) -> torch.Tensor:
    """fp32 logits [N, V] of hidden states [N, H]: from bf16 inputs with fp32 accumulation (`weight_bf16`, the
    weight's bf16 copy, if one was made), or in fp32."""
    if bf16_inputs:
        return _Bf16Product.apply(flat, weight, _cast_bf16(weight) if weight_bf16 is None else weight_bf16)
    return torch.mm(flat.float().contiguous(), weight.float().t())


def _cast_bf16(weight: torch.Tensor) -> torch.Tensor:
    return weight.detach().bfloat16()


def _bf16_weight(head) -> torch.Tensor:
    """The head's weight in bf16: cast anew on each call, or once inside a head_cast_once block (again only if an
    optimizer step changed the weight there: its version moved)."""
    cache = getattr(head, "_bf16_cache", None)
    if cache is None:
        return _cast_bf16(head.weight)
    if cache.get("version") != head.weight._version:
        cache.update(version=head.weight._version, weight=_cast_bf16(head.weight))
    return cache["weight"]


@contextmanager
def head_cast_once(*models):
    """Inside the block, the bf16 copy of each model's LM head weight (151,936 x 2,048 at 3B, tied to the embeddings:
    1.2 GB read and 0.6 GB written a cast) is made once, at its first bf16 product, and shared by every later forward
    (each decode token, each micro-batch, every CUDA graph of the sampler); without it every forward casts. π_SFT with
    the adapter off shares the policy's head. A no-op off the GPU's bf16 path."""
    heads = {id(h): h for h in (m.get_output_embeddings() for m in models if m is not None)}.values()
    saved = [getattr(h, "_bf16_cache", None) for h in heads]
    for h, outer in zip(heads, saved):
        h._bf16_cache = outer if outer is not None else {}  # an enclosing block's copy serves this one too
    try:
        yield
    finally:
        for h, outer in zip(heads, saved):
            h._bf16_cache = outer


class _Bf16Product(torch.autograd.Function):
    """flat @ weight.T from bf16 inputs into fp32, forward and backward (torch.mm's out_dtype has no derivative);
    `weight` itself is passed for its gradient, its bf16 copy `w` for the products."""

    @staticmethod
    def forward(ctx, flat, weight, w):
        a = flat.bfloat16()
        ctx.save_for_backward(a, w)
        ctx.dtypes = flat.dtype, weight.dtype
        return _mm_fp32(a, w.t())

    @staticmethod
    def backward(ctx, grad):
        a, w = ctx.saved_tensors
        g = grad.bfloat16()
        grad_flat = _mm_fp32(g, w).to(ctx.dtypes[0]) if ctx.needs_input_grad[0] else None
        grad_weight = _mm_fp32(g.t(), a).to(ctx.dtypes[1]) if ctx.needs_input_grad[1] else None
        return grad_flat, grad_weight, None


def _mm_fp32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.mm(a, b, out_dtype=torch.float32)  # bf16 in, fp32 accumulated and out (CUDA only)


# ---- per-token log-probs of completions ----

def image_features(model, prompt: dict) -> tuple:
    """The vision tower's output for each image of `prompt` (no gradient): computed once a step and handed, as
    prompt["image_features"], to every forward that would run the frozen tower again on the same pixels (sampling,
    π_SFT, π_θ)."""
    with torch.no_grad():
        out = inner(model).get_image_features(prompt["pixel_values"], prompt["image_grid_thw"], return_dict=True)
    return tuple(t.detach() for t in out.pooler_output)


def shared_image_features(model, prompt: dict, images: list) -> dict:
    """`prompt` with each distinct image run through the vision tower once, with its gradient, and its features handed
    to every row that shows it (`images`: a key per row, one image a row, as prompt_batch makes them): the questions
    of one image cost one pass of the tower, not one each."""
    grid = prompt["image_grid_thw"]
    patches = prompt["pixel_values"].split(grid.prod(1).tolist())
    first = {}  # each image's first row
    for row, key in enumerate(images):
        first.setdefault(key, row)
    rows = list(first.values())
    out = inner(model).get_image_features(torch.cat([patches[r] for r in rows]), grid[rows], return_dict=True)
    features = dict(zip(rows, out.pooler_output))
    return {**prompt, "image_features": tuple(features[first[key]] for key in images)}


def model_inputs(prompt: dict) -> dict:
    """The keyword arguments of a forward pass over `prompt`: precomputed image features (image_features) go in as
    the model's mm_encoder_outputs instead of pixels."""
    if "image_features" not in prompt:
        return prompt
    from transformers.modeling_outputs import BaseModelOutputWithPooling
    inputs = {k: v for k, v in prompt.items() if k not in ("pixel_values", "image_features")}
    return {**inputs, "mm_encoder_outputs": {"image": BaseModelOutputWithPooling(pooler_output=prompt["image_features"])}}


def completion_inputs(prompt: dict, completion_ids: torch.Tensor, completion_mask: torch.Tensor) -> dict:
    """Model inputs for prompt + completion (prompt left-padded, completion right-padded)."""
    inputs = dict(prompt)
    inputs["input_ids"] = torch.cat([prompt["input_ids"], completion_ids], 1)
    inputs["attention_mask"] = torch.cat([prompt["attention_mask"], completion_mask.to(prompt["attention_mask"])], 1)
    if "mm_token_type_ids" in prompt:  # zeros on completion tokens, or the M-RoPE positions shift from generate's
        inputs["mm_token_type_ids"] = torch.cat([prompt["mm_token_type_ids"], torch.zeros_like(completion_ids)], 1)
    return inputs


def completion_logprobs(model, prompt: dict, completion_ids: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """log π(y_t | I, Q, y_<t) for every completion token: [B, T]. Logits only at the completion positions."""
    inputs = completion_inputs(prompt, completion_ids, completion_mask)
    P, T = prompt["input_ids"].shape[1], completion_ids.shape[1]
    # Position P-1+t predicts token t; the LM head runs on those T positions only ([B, T, V], not [B, P+T, V]).
    keep = torch.arange(P - 1, P + T - 1, device=completion_ids.device)
    logits = model(**model_inputs(inputs), logits_to_keep=keep, use_cache=False).logits.float()
    return torch.gather(logits, 2, completion_ids.unsqueeze(2)).squeeze(2) - logits.logsumexp(2)


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
    text = {k: v.repeat_interleave(G, 0) for k, v in prompt.items()
            if k not in ("pixel_values", "image_grid_thw", "image_features")}
    full = completion_inputs(text, completion_ids, completion_mask)
    # the M-RoPE positions of the whole sequences, as one forward over prompt + completion would use them
    positions, _ = inner(model).get_rope_index(full["input_ids"], mm_token_type_ids=full["mm_token_type_ids"],
                                               image_grid_thw=prompt["image_grid_thw"].repeat_interleave(G, 0),
                                               attention_mask=full["attention_mask"])
    prefill = model(**model_inputs(prompt), position_ids=positions[:, ::G, :P], use_cache=True, logits_to_keep=1)
    cache = prefill.cache
    cache.batch_repeat_interleave(G)  # one prompt's keys and values for each of its G completions
    first = prefill.logits.repeat_interleave(G, 0)  # predicts completion token 0
    rest = model(input_ids=completion_ids[:, :-1], attention_mask=full["attention_mask"][:, :-1],
                 position_ids=positions[:, :, P:-1], cache=cache, use_cache=True).logits
    logits = torch.cat([first, rest], 1).float()
    return torch.gather(logits, 2, completion_ids.unsqueeze(2)).squeeze(2) - logits.logsumexp(2)


def inner(model):
    """The Qwen2_5_VLModel (vision tower, language model, M-RoPE) inside a (PEFT-wrapped) Qwen2.5-VL."""
    while not hasattr(model, "get_rope_index"):
        model = model.model if hasattr(model, "model") else model.base_model
    return model


def repeat_prompts(prompt: dict, n: int) -> dict:
    """Repeat each prompt (and its image patches or features) n times in a row, as sample() groups its rows."""
    out = {k: v.repeat_interleave(n, 0) for k, v in prompt.items()
           if k not in ("pixel_values", "image_grid_thw", "image_features")}
    if "image_features" in prompt:
        out["image_features"] = tuple(f for f in prompt["image_features"] for _ in range(n))
    if "pixel_values" in prompt:
        grid = prompt["image_grid_thw"]
        patches = prompt["pixel_values"].split(grid.prod(1).tolist())
        out["pixel_values"] = torch.cat([p for p in patches for _ in range(n)])
        out["image_grid_thw"] = grid.repeat_interleave(n, 0)
    return out


def end_of_turn_mask(ids: torch.Tensor, end_ids: list[int]) -> torch.Tensor:
    """1 up to and including the first end-of-turn token of each row, 0 after it: [B, T] long."""
    is_end = torch.isin(ids, torch.tensor(end_ids, device=ids.device))
    ended_before = (is_end.cumsum(1) - is_end.long()) > 0
    return (~ended_before).long()


def end_token_ids(tokenizer) -> list[int]:
    return [tokenizer.convert_tokens_to_ids(t) for t in (END_OF_TURN, "<|endoftext|>")]


def special_tokens(tokenizer) -> list[str]:
    """The tokenizer's special tokens: what a completion may not write into its text (Eq. 4), for any model's
    tokenizer (Qwen's all read <|...|>, Gemma's <start_of_turn>, ...)."""
    added = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    return sorted(added | set(tokenizer.all_special_tokens))


def completion_texts(tokenizer, ids: torch.Tensor, mask: torch.Tensor, ended: torch.Tensor) -> list[str]:
    """The text of each completion: its tokens up to the first end-of-turn token, that token and the padding left out,
    every other special token kept (a completion that writes <|im_start|> or is cut off is not well formed, Eq. 4)."""
    lengths = (mask.sum(1) - ended.long()).tolist()
    return [tokenizer.decode(row[:n], skip_special_tokens=False) for row, n in zip(ids.tolist(), lengths)]


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


if __name__ == "__main__":
    raise SystemExit("model.py is a library now; the tiny model moved: python tiny.py --out DIR [--corpus train.jsonl]")
