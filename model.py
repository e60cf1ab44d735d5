"""Qwen2.5-VL for MedAD-R1: loading, LoRA, precision, completion log-probs, the sampler, torchrun and FSDP2,
checkpoints, and a tiny offline model.

Imports nothing from the project, so it can be copied alone into another experiment.

    python model.py tiny --out runs/tiny --corpus runs/data/train.jsonl   # a random tiny Qwen2.5-VL + processor

The tiny model is a real `Qwen2_5_VLForConditionalGeneration` with a BPE tokenizer trained offline, so
every code path (processor, M-RoPE, vision tower, LoRA, generate) is the one the 3B model runs through.
"""
import argparse
import glob
import json
import os
import re
import shutil
import types
from contextlib import contextmanager

import torch
import torch.distributed as dist
from transformers import (AutoModelForImageTextToText, AutoProcessor, AutoTokenizer,
                          GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration,
                          Qwen2_5_VLProcessor)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

DEFAULT_MODEL = "Qwen/Qwen2.5-VL-3B-Instruct"
MAX_PIXELS = 1280 * 28 * 28  # 1,003,520 pixels: at most 1,280 image tokens a picture (--max-pixels)
# The special tokens of Qwen2.5-VL, in Qwen's order (ids follow the BPE vocabulary, as in Qwen's tokenizer).
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                  "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                  "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
                  "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
                  "<|repo_name|>", "<|file_sep|>"]
VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
END_OF_TURN = "<|im_end|>"
# Qwen2's pre-tokenizer split (digits one by one, words with their leading space or punctuation).
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")
# Qwen2.5-VL's chat template, images only.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
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
    if max_pixels < size["shortest_edge"]:
        raise ValueError(f"--max-pixels {max_pixels} is below the processor's smallest image ({size['shortest_edge']} "
                         "pixels)")
    size["longest_edge"] = min(size["longest_edge"], max_pixels)


def _chat_template(path, tokenizer):
    if tokenizer.chat_template:
        return tokenizer.chat_template
    for name in ("chat_template.jinja", "chat_template.json"):
        file = os.path.join(path, name)
        if os.path.isfile(file):
            text = open(file, encoding="utf-8").read()
            return json.loads(text)["chat_template"] if name.endswith(".json") else text
    return None  # a hub model: transformers fetches the template with the processor


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
    try:
        model = AutoModelForImageTextToText.from_pretrained(base, dtype=dtype, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise OSError(f"cannot load the model {base!r}{' (named by ' + path + '/adapter_config.json)' if base != path else ''}:"
                      f" give a local folder or a hub id that is cached (HF_HUB_OFFLINE=1 needs it cached). {e}") from e
    if base != path:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, path)
        if merge:
            model = model.merge_and_unload()
    has_processor = glob.glob(os.path.join(path, "tokenizer*")) if os.path.isdir(path) else True
    processor = load_processor(path if has_processor else base, trust_remote_code, max_pixels)
    return model.to(device).eval(), processor


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


def _fp32_linear(self, hidden):
    with torch.autocast(hidden.device.type, enabled=False):
        return torch.nn.functional.linear(hidden.float(), self.weight.float())


# ---- log-probs and sampling ----

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
    logits = model(**inputs, logits_to_keep=keep, use_cache=False).logits.float()
    return torch.gather(logits, 2, completion_ids.unsqueeze(2)).squeeze(2) - logits.logsumexp(2)


def group_logprobs(model, prompt: dict, completion_ids: torch.Tensor, completion_mask: torch.Tensor,
                   group_size: int) -> torch.Tensor:
    """completion_logprobs for G completions per prompt (rows grouped as sample() returns them), running each
    prompt, its image included, once: its KV cache is computed once and shared by the group's G completions."""
    G, P = group_size, prompt["input_ids"].shape[1]
    language_model = _inner(model).language_model
    if language_model.gradient_checkpointing and language_model.training:  # no KV cache then: repeat the prompts
        return completion_logprobs(model, repeat_prompts(prompt, G), completion_ids, completion_mask)
    text = {k: v.repeat_interleave(G, 0) for k, v in prompt.items() if k not in ("pixel_values", "image_grid_thw")}
    full = completion_inputs(text, completion_ids, completion_mask)
    # the M-RoPE positions of the whole sequences, as one forward over prompt + completion would use them
    positions, _ = _inner(model).get_rope_index(full["input_ids"], mm_token_type_ids=full["mm_token_type_ids"],
                                               image_grid_thw=prompt["image_grid_thw"].repeat_interleave(G, 0),
                                               attention_mask=full["attention_mask"])
    prefill = model(**prompt, position_ids=positions[:, ::G, :P], use_cache=True, logits_to_keep=1)
    cache = prefill.cache
    cache.batch_repeat_interleave(G)  # one prompt's keys and values for each of its G completions
    first = prefill.logits.repeat_interleave(G, 0)  # predicts completion token 0
    rest = model(input_ids=completion_ids[:, :-1], attention_mask=full["attention_mask"][:, :-1],
                 position_ids=positions[:, :, P:-1], cache=cache, use_cache=True).logits
    logits = torch.cat([first, rest], 1).float()
    return torch.gather(logits, 2, completion_ids.unsqueeze(2)).squeeze(2) - logits.logsumexp(2)


def _inner(model):
    """The Qwen2_5_VLModel inside a (PEFT-wrapped) Qwen2_5_VLForConditionalGeneration."""
    while not hasattr(model, "get_rope_index"):
        model = model.model if hasattr(model, "model") else model.base_model
    return model


def repeat_prompts(prompt: dict, n: int) -> dict:
    """Repeat each prompt (and its image patches) n times in a row, matching generate's num_return_sequences."""
    out = {k: v.repeat_interleave(n, 0) for k, v in prompt.items() if k not in ("pixel_values", "image_grid_thw")}
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


class KVCache:
    """Keys and values of every layer in preallocated buffers, [batch, kv heads, length, head dim], written from
    position `pos` on (a tensor, so that a CUDA graph can replay a decode step): what the attention layers of
    transformers call `update` on."""

    def __init__(self, length: int, pos: int = 0, device=None):
        self.length, self.keys, self.values = length, {}, {}
        self.pos = torch.tensor(pos, device=device)

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        if layer_idx not in self.keys:
            shape = (*key_states.shape[:2], self.length, key_states.shape[3])
            self.keys[layer_idx], self.values[layer_idx] = key_states.new_zeros(shape), value_states.new_zeros(shape)
        where = self.pos + torch.arange(key_states.shape[2], device=key_states.device)
        self.keys[layer_idx].index_copy_(2, where, key_states)
        self.values[layer_idx].index_copy_(2, where, value_states)
        return self.keys[layer_idx], self.values[layer_idx]

    def repeat(self, n: int, length: int) -> "KVCache":
        """Each row n times in a row, in buffers of `length` positions: a prompt's keys and values for its G samples."""
        grown = KVCache(length, int(self.pos), self.pos.device)
        for stored, into in ((self.keys, grown.keys), (self.values, grown.values)):  # keys may be fp32, values bf16
            for i, t in stored.items():
                into[i] = t.new_zeros(t.shape[0] * n, t.shape[1], length, t.shape[3])
                into[i][:, :, :self.length] = t.repeat_interleave(n, 0)
        return grown


def _mask(allowed: torch.Tensor, model) -> dict:
    """A [B, 1, queries, keys] boolean mask (True: may attend) in the form the attention implementation takes."""
    if model.config._attn_implementation == "eager":  # additive
        allowed = torch.zeros(allowed.shape, device=allowed.device).masked_fill(~allowed, torch.finfo(torch.float32).min)
    return {"full_attention": allowed}


def _pick(logits, *, greedy: bool, temperature: float, top_p: float, banned: torch.Tensor):
    """The next token of each row, and its log-probability under π_θ itself (temperature 1, nothing banned): what
    completion_logprobs gives for it. Sampling draws argmax(p / E), E ~ Exp(1): a draw from p without a host sync."""
    logp = logits.log_softmax(-1)
    scores = logits.masked_fill(banned, float("-inf"))
    if greedy:
        token = scores.argmax(-1)
    else:
        probs = (scores / temperature).softmax(-1)
        if top_p < 1.0:  # the smallest set of most likely tokens whose mass reaches top_p
            sorted_probs, order = probs.sort(-1, descending=True)
            outside = sorted_probs.cumsum(-1) - sorted_probs >= top_p
            probs = probs.scatter(-1, order, sorted_probs.masked_fill(outside, 0.0))
        token = (probs / torch.empty_like(probs).exponential_()).argmax(-1)
    return token, logp.gather(-1, token[:, None]).squeeze(-1)


@torch.no_grad()
def sample(model, processor, prompt: dict, *, group_size: int = 1, max_new_tokens: int = 256,
           temperature: float = 1.0, top_p: float = 1.0, greedy: bool = False, seed: int | None = None,
           min_new_tokens: int = 0, cuda_graph: bool | None = None) -> dict:
    """G completions per prompt, decoded from π_θ itself. Rows are grouped consecutively: [p0 s0..sG-1, p1 s0, ...].

    Each prompt, its image included, is prefilled once and its keys and values copied to its G rows; then one
    forward a token for all rows, on a static KV cache, captured in a CUDA graph on GPUs (cuda_graph=None: where it
    can). Temperature and top-p as given, top-k off, nothing of the checkpoint's generation_config.json (Qwen2.5-VL-
    3B-Instruct's repetition_penalty 1.05 and top_k 1 would make every rollout off-policy for Eq. 8). Vision tokens
    are never sampled (a sampled <|image_pad|> breaks the next forward's image-token count); no end of turn before
    min_new_tokens. Returns completion ids [N*G, T] (pad after the end), their mask (up to the first end-of-turn
    token, included), their log-probs under π_θ at temperature 1 [N*G, T] (as completion_logprobs gives them) and
    texts.
    """
    if seed is not None:
        torch.manual_seed(seed)
    tok = processor.tokenizer
    end_ids = torch.tensor(end_token_ids(tok), device=prompt["input_ids"].device)
    (N, P), G, T = prompt["input_ids"].shape, group_size, max_new_tokens
    B, L, device = N * G, P + T, prompt["input_ids"].device

    # ---- prefill each prompt once; its keys and values then serve its G rows ----
    valid = prompt["attention_mask"].bool()  # left padding
    positions, deltas = _inner(model).get_rope_index(prompt["input_ids"], mm_token_type_ids=prompt.get("mm_token_type_ids"),
                                                     image_grid_thw=prompt.get("image_grid_thw"), attention_mask=prompt["attention_mask"])
    causal = torch.ones(P, P, dtype=torch.bool, device=device).tril()
    allowed = (causal & valid[:, None, :]) | torch.eye(P, dtype=torch.bool, device=device)  # a pad attends to itself
    prefill = KVCache(P, device=device)
    logits = model(**{k: v for k, v in prompt.items() if k != "attention_mask"}, position_ids=positions,
                   attention_mask=_mask(allowed[:, None], model), cache=prefill, use_cache=True,
                   logits_to_keep=1).logits[:, -1].float().repeat_interleave(G, 0)
    cache = prefill.repeat(G, L)
    seen = torch.zeros(B, L, dtype=torch.bool, device=device)  # keys each row may attend to
    seen[:, :P] = valid.repeat_interleave(G, 0)
    # the M-RoPE position of the first new token (the prompt's last + 1), all three axes alike, padding not counted
    start = (valid.sum(1) + deltas.view(N)).repeat_interleave(G)

    # ---- decode: one forward a token for all rows ----
    token_in = torch.zeros(B, 1, dtype=torch.long, device=device)
    position_in = torch.zeros(3, B, 1, dtype=torch.long, device=device)

    def step():
        return model(input_ids=token_in, position_ids=position_in, attention_mask=_mask(seen[:, None, None], model),
                     cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1].float()

    if cuda_graph is None:  # where it can: on a GPU, a model not sharded (FSDP's hooks run Python at every forward)
        cuda_graph = device.type == "cuda" and not _fsdp_units(model)
    graph = None
    banned = torch.zeros(logits.shape[-1], dtype=torch.bool, device=device)
    banned[tok.convert_tokens_to_ids(VISION_TOKENS)] = True
    no_end = banned.clone()
    no_end[end_ids] = True
    ids = torch.full((B, T), tok.pad_token_id, dtype=torch.long, device=device)
    logps = torch.zeros(B, T, device=device)
    ended = torch.zeros(B, dtype=torch.bool, device=device)
    for t in range(T):
        token, logp = _pick(logits, greedy=greedy, temperature=temperature, top_p=top_p,
                            banned=no_end if t < min_new_tokens else banned)
        ids[:, t] = token.masked_fill(ended, tok.pad_token_id)
        logps[:, t] = logp
        ended |= torch.isin(token, end_ids)
        if t == T - 1 or (t % 8 == 7 and bool(ended.all())):  # a host sync every 8 tokens, not every token
            break
        token_in.copy_(ids[:, t:t + 1])
        position_in.copy_((start + t).view(1, B, 1).expand(3, B, 1))
        seen[:, P + t] = True
        cache.pos.fill_(P + t)
        if cuda_graph and graph is None:
            graph, logits_out = _capture(step)
            cuda_graph = graph is not None
        if graph is not None:
            graph.replay()  # logits_out is read before the next replay overwrites it
            logits = logits_out
        else:
            logits = step()
    mask = end_of_turn_mask(ids[:, :t + 1], end_ids.tolist())
    ids, logps = ids[:, :t + 1].masked_fill(mask == 0, tok.pad_token_id), logps[:, :t + 1] * mask
    return {"completion_ids": ids, "completion_mask": mask, "logprobs": logps,
            "texts": tok.batch_decode(ids, skip_special_tokens=True)}


def _capture(step):
    """(a CUDA graph of step(), its output buffer), or (None, None) where the model cannot be captured: one replay
    then runs the whole decode step, every kernel at once, instead of ~1,000 launches from Python."""
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # warm up: cuBLAS workspaces, autocast's cached casts (the step writes the same keys)
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = step()
        return graph, out
    except RuntimeError as e:  # a host sync or a CPU-side branch inside the model: decode without the graph
        print(f"model.sample: decoding without a CUDA graph ({type(e).__name__}: {str(e)[:200]})")
        return None, None


# ---- distributed: data parallel and FSDP2 ----
# One process by default. Under torchrun a process group exists whatever its size (so that `torchrun
# --nproc_per_node 1` on one GPU runs NCCL as 8 GPUs do), every collective takes tensors on the group's device (NCCL
# reduces CUDA tensors only), and each rank starts from rank 0's weights. Replicated by default: each rank holds the
# whole model and gradients are summed explicitly before each step. With --fsdp, FSDP2 shards weights, gradients and
# optimizer state, and sums the gradients itself in backward.

def init_distributed() -> tuple[int, int, str]:
    """(rank, world size, device). Under torchrun: a process group (NCCL on GPUs, gloo on CPU); else one process."""
    if "RANK" not in os.environ:
        return 0, 1, default_device()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size(), f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"


def get_rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def group_device() -> torch.device:
    """The device of the process group's collectives: this rank's GPU under NCCL, the CPU under gloo."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def barrier():
    if dist.is_initialized():
        dist.barrier(device_ids=[torch.cuda.current_device()] if dist.get_backend() == "nccl" else None)


def all_reduce_sum(value: float | dict) -> float | dict:
    """The sum over ranks of a number, or of each number of a dict (in one collective); as is without a group."""
    if not dist.is_initialized():
        return value
    numbers = list(value.values()) if isinstance(value, dict) else [value]
    t = torch.tensor([float(x) for x in numbers], dtype=torch.float64, device=group_device())
    dist.all_reduce(t)
    summed = t.tolist()
    return dict(zip(value, summed)) if isinstance(value, dict) else summed[0]


def broadcast_parameters(model):
    """Rank 0's weights on every rank, whatever each rank's seed made of its own (a LoRA's random init, say)."""
    if dist.is_initialized():
        for p in model.parameters():
            dist.broadcast(p.data, src=0)
    return model


def sync_grads(params):
    """Sum gradients over ranks (each rank's loss is already divided by the global count). FSDP's sharded
    parameters are skipped: their gradients were reduce-scattered, summed, in backward."""
    if not dist.is_initialized():
        return
    from torch.distributed.tensor import DTensor
    for p in params:
        if isinstance(p, DTensor):
            continue
        if p.grad is None:  # unused on this rank (e.g. no image): every rank must join every all-reduce
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)


def clip_grad_norm(params, max_norm: float) -> float:
    """Clip the gradients' global norm to max_norm; returns the norm before clipping (over all shards under FSDP)."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return (norm.full_tensor() if hasattr(norm, "full_tensor") else norm).item()


def _fsdp_units(model) -> list:
    from torch.distributed.fsdp import FSDPModule
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def shard(model):
    """FSDP2 (torch's fully_shard): weights, gradients and optimizer state sharded over the ranks, one unit per decoder
    layer and vision block, then the rest (embeddings, LM head, vision merger) at the root. Gradients are summed over
    ranks, as sync_grads does, not averaged. Needs a process group (torchrun, even of one process)."""
    from torch.distributed.fsdp import fully_shard
    if not dist.is_initialized():
        raise SystemExit("--fsdp needs a process group: run the script with torchrun (torchrun --nproc_per_node 1 "
                         "... on one GPU)")
    inner = _inner(model)
    for unit in [*inner.visual.blocks, *inner.language_model.layers]:
        fully_shard(unit)
    fully_shard(model)
    for unit in _fsdp_units(model):
        unit.set_gradient_divide_factor(1.0)
        if dist.get_backend() == "gloo":
            unit.set_force_sum_reduction_for_comms(True)  # a plain sum: gloo has no pre-multiplied one
    # FSDP2 takes the first unit to run forward as the root; generate runs the vision blocks before the root's
    # forward, so the root runs once now
    with torch.no_grad():
        model(input_ids=torch.zeros(1, 1, dtype=torch.long, device=group_device()), logits_to_keep=1)
    model.reshard()  # the root keeps its weights gathered after a forward: shard them again for the optimizer
    return model


@contextmanager
def unsharded(model):
    """Every FSDP unit of `model` gathered for the block, and kept gathered across forwards: generation runs one
    forward per token, which would otherwise all-gather every layer every time. A no-op for a model not sharded."""
    units = _fsdp_units(model)
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    try:
        yield model
    finally:
        for unit in units:
            unit.reshard()
            unit.set_reshard_after_forward(unit is not model, recurse=False)  # the root never reshards after forward


# ---- saving and checkpoints ----

def save_processor(processor, out: str):
    """Write the processor as the hub model ships it (tokenizer + image processor files), loadable without
    torchvision and by AutoProcessor alike."""
    tokenizer = processor.tokenizer
    tokenizer.chat_template = tokenizer.chat_template or processor.chat_template
    tokenizer.save_pretrained(out)
    processor.image_processor.save_pretrained(out)


def full_state(model, trained_only: bool = False) -> dict:
    """The model's weights as CPU tensors by parameter name (tied weights once), gathered from the shards under FSDP:
    every rank must call it, and under FSDP only rank 0 gets them."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    names = {n for n, p in model.named_parameters() if p.requires_grad or not trained_only}
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True,
                                                                ignore_frozen_params=trained_only))
    return {n: t.detach().cpu().contiguous() for n, t in full.items() if n in names}


def trainable_state(model) -> dict:
    return full_state(model, trained_only=True)


def save_model(out: str, model, processor, dtype: torch.dtype):
    """The run's final output in OUT: a plain Hugging Face folder (save_pretrained, weights in `dtype`; a PEFT model
    writes its adapter) with the processor, loadable by from_pretrained and load_model. Every rank calls it: under
    FSDP the shards are gathered to rank 0, which writes. A crash never leaves half of it: the files are written to
    a temporary folder, then moved into OUT one by one (each move atomic; the config last, so a half-moved folder does
    not load). mark_done then says the run finished."""
    adapter = hasattr(model, "peft_config")
    state = None if adapter else {n: t.to(dtype) for n, t in full_state(model).items()}
    if get_rank() != 0:
        return
    tmp = os.path.join(out, ".final.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp, **({} if adapter else {"state_dict": state}))
        save_processor(processor, tmp)
        for name in sorted(os.listdir(tmp), key=lambda name: name in ("config.json", "adapter_config.json")):
            os.replace(os.path.join(tmp, name), os.path.join(out, name))
        os.rmdir(tmp)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(f"writing the final model to {out}: {e}. Its newest complete checkpoint is "
                      f"{latest_checkpoint(out)}: make room and run again with --resume") from e


def mark_done(out: str):
    """OUT/DONE, written last (by rank 0): the run finished and its outputs are complete (ablations.sh skips such
    runs). start_step removes it when a run starts again in OUT."""
    if get_rank() == 0:
        with open(os.path.join(out, "DONE.tmp"), "w") as f:
            f.write("finished: the outputs in this folder are complete\n")
        os.replace(os.path.join(out, "DONE.tmp"), os.path.join(out, "DONE"))


def _rng_state() -> dict:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()  # this rank's GPU
    return state


def save_checkpoint(out: str, step: int, model, optimizer, scheduler, **extra) -> str:
    """OUT/checkpoint-STEP: the trained weights (trainable.safetensors), the optimizer (optimizer.pt), the step and
    scheduler (state.pt), and each rank's RNG states (rng-RANK.pt). Every rank calls it. Under FSDP the shards are
    gathered to rank 0 on CPU, so that a checkpoint is the same files however the run was sharded and resumes with
    or without FSDP, on any number of GPUs (the cost: rank 0's CPU memory holds the trained weights and AdamW state,
    12 bytes a parameter). Written to a temporary folder renamed when complete: a crash never leaves half a
    checkpoint. Across nodes, OUT must be a folder every rank sees (a shared file system)."""
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
    rank, final = get_rank(), os.path.join(out, f"checkpoint-{step}")
    tmp = final + ".tmp"
    weights = trainable_state(model)
    optim = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    barrier()
    error = None
    try:
        torch.save(_rng_state(), os.path.join(tmp, f"rng-{rank}.pt"))
        if rank == 0:
            save_file(weights, os.path.join(tmp, "trainable.safetensors"))
            torch.save(optim, os.path.join(tmp, "optimizer.pt"))
            torch.save({"step": step, "scheduler": scheduler.state_dict(), "extra": extra}, os.path.join(tmp, "state.pt"))
    except OSError as e:  # a full disk, say
        error = e
    if all_reduce_sum(float(error is not None)):  # every rank learns of it: none waits for the others forever
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(f"writing {final}: {error or 'failed on another rank'}. The newest complete checkpoint is still "
                      f"{latest_checkpoint(out)}: make room and run again with --resume") from error
    if rank == 0:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    barrier()
    return final


def checkpoint_and_stop(out: str, step: int, model, optimizer, scheduler, *, save_every: int, stop_after: int) -> bool:
    """The end of a training step: a checkpoint every `save_every` steps and at `stop_after` (every rank calls it);
    True when the run stops here, as if interrupted (--stop-after, for testing --resume)."""
    stop = bool(stop_after) and step >= stop_after
    if (save_every and step % save_every == 0) or stop:
        save_checkpoint(out, step, model, optimizer, scheduler)
    return stop


def latest_checkpoint(out: str) -> str | None:
    """The newest complete checkpoint folder in `out` (temporary folders are incomplete and ignored)."""
    steps = [int(name.split("-")[1]) for name in os.listdir(out) if re.fullmatch(r"checkpoint-\d+", name)] \
        if os.path.isdir(out) else []
    return os.path.join(out, f"checkpoint-{max(steps)}") if steps else None


def load_checkpoint(path: str, model, optimizer, scheduler) -> dict:
    """Restore what save_checkpoint wrote; every rank calls it. Rank 0 reads the weights and optimizer state (to CPU)
    and broadcasts them, each rank keeping its shard under FSDP; each rank restores its own RNG states."""
    from safetensors import safe_open
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)
    rank, file = get_rank(), os.path.join(path, "trainable.safetensors")
    with safe_open(file, "pt") as f:
        missing = {n for n, p in model.named_parameters() if p.requires_grad} - set(f.keys())
    if missing:
        raise ValueError(f"{path}: the checkpoint lacks {len(missing)} trainable tensors (e.g. {sorted(missing)[0]}); "
                         "was it written with other flags (--lora, --full, --train-vision)?")
    rng = os.path.join(path, f"rng-{rank}.pt")
    if not os.path.isfile(rng):
        raise ValueError(f"{path}: no rng-{rank}.pt: the checkpoint was written by a run of fewer ranks; resume it "
                         "with as many ranks as wrote it")
    options = StateDictOptions(full_state_dict=True, strict=False, broadcast_from_rank0=dist.is_initialized())
    load = lambda name: torch.load(os.path.join(path, name), map_location="cpu", weights_only=True)  # noqa: E731
    set_model_state_dict(model, load_file(file) if rank == 0 else {}, options=options)
    set_optimizer_state_dict(model, optimizer, load("optimizer.pt") if rank == 0 else {}, options=options)
    state = load("state.pt")
    scheduler.load_state_dict(state["scheduler"])
    rng = load(f"rng-{rank}.pt")
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    return state


def start_step(out: str, resume: bool, model, optimizer, scheduler) -> int:
    """The step a run starts from: with --resume the newest complete checkpoint in `out`, restored (an error when
    there is none); else 0, refusing an `out` that holds an earlier run's checkpoints. OUT/DONE of an earlier
    finished run goes: this one is not finished yet."""
    path = latest_checkpoint(out)
    if resume and path is None:
        raise SystemExit(f"--resume: {out} holds no complete checkpoint (checkpoint-STEP/); run without --resume to "
                         "start from step 0")
    if not resume and path is not None:
        raise SystemExit(f"{out} holds {os.path.basename(path)} of an earlier run: pass --resume to continue it, or "
                         "give another --out")
    if get_rank() == 0 and os.path.exists(os.path.join(out, "DONE")):
        os.remove(os.path.join(out, "DONE"))  # a run under way is not finished: mark_done writes it again
    return load_checkpoint(path, model, optimizer, scheduler)["step"] if resume else 0


def open_log(path: str, step: int):
    """A JSONL log (one row a step) opened to append from `step` on. Rows of later steps, written by an interrupted
    run after the checkpoint it resumes from, are dropped, so a resumed run's log reads as an uninterrupted one's."""
    rows = open(path, encoding="utf-8").readlines() if os.path.exists(path) else []
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.writelines(row for row in rows if row.strip() and json.loads(row)["step"] <= step)
    os.replace(path + ".tmp", path)
    return open(path, "a", encoding="utf-8")


def lr_schedule(optimizer, total_steps: int, warmup_ratio: float, decay: str = "cosine"):
    """Linear warm-up over warmup_ratio of the steps, then cosine decay to 0 or a constant rate."""
    import math
    warmup = max(1, round(warmup_ratio * total_steps)) if warmup_ratio > 0 else 0

    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        if decay == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ---- the tiny offline model ----

def train_tokenizer(corpus, vocab_size: int = 1024):
    """A byte-level BPE with Qwen2's pre-tokenizer and Qwen's special tokens, trained offline on `corpus`."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer
    bpe = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(corpus, trainer)
    bpe.add_special_tokens(SPECIAL_TOKENS)
    return Qwen2Tokenizer(tokenizer_object=bpe, eos_token=END_OF_TURN, pad_token="<|endoftext|>", bos_token=None,
                          unk_token=None, padding_side="left", errors="replace", model_max_length=32768,
                          clean_up_tokenization_spaces=False, split_special_tokens=False)


def tiny_config(tokenizer, hidden: int = 64, layers: int = 2, heads: int = 4, vision_hidden: int = 64,
                vision_layers: int = 1, rope_theta: float = 1e4) -> Qwen2_5_VLConfig:
    head_dim = hidden // heads
    half = head_dim // 2  # M-RoPE splits head_dim/2 frequencies over (time, height, width)
    mrope = [half - 2 * (half // 3), half // 3, half // 3]
    ids = tokenizer.convert_tokens_to_ids
    return Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
                         max_position_embeddings=4096, rms_norm_eps=1e-6, tie_word_embeddings=True,
                         rope_parameters={"rope_type": "default", "rope_theta": rope_theta, "mrope_section": mrope},
                         bos_token_id=ids("<|endoftext|>"), eos_token_id=ids(END_OF_TURN),
                         pad_token_id=ids("<|endoftext|>"), initializer_range=0.3),
        vision_config=dict(depth=vision_layers, hidden_size=vision_hidden, intermediate_size=2 * vision_hidden,
                           num_heads=2, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                           window_size=112, out_hidden_size=hidden, fullatt_block_indexes=list(range(vision_layers)),
                           # 0.05, not 0.02: image tokens then leave the merger at about the scale of the text
                           # embeddings (std ~0.4 vs 0.3; 0.06 at 0.02), and are not drowned in the residual stream
                           initializer_range=0.05),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=True,
        # With the usual 0.02 the tied output layer keeps every logit within about ±1, and a LoRA (which cannot
        # change it) stalls at a loss of ~5.5 on 8 examples; 0.3 lets it reach ~0.001, as a pretrained model would.
        initializer_range=0.3)


def corpus_lines(paths: list[str]):
    """Every string of every JSONL record (or every line of a text file): the text the tokenizer should know."""
    for path in paths:
        for line in open(path, encoding="utf-8"):
            if path.endswith(".jsonl"):
                record = json.loads(line)
                yield from (v for v in record.values() if isinstance(v, str))
                yield from (o for o in record.get("options", []) if isinstance(o, str))
            else:
                yield line


def build_tiny(out: str, *, seed: int = 0, corpus=(), vocab_size: int = 1024, hidden: int = 64, layers: int = 2,
               heads: int = 4, rope_theta: float = 1e4, image_px: int = 112) -> str:
    """Write a randomly initialised tiny Qwen2.5-VL and its processor to `out`; loads like the hub model."""
    torch.manual_seed(seed)
    tokenizer = train_tokenizer(["<think> </think> <answer> </answer> A B C D", *corpus], vocab_size)
    tokenizer.chat_template = CHAT_TEMPLATE
    config = tiny_config(tokenizer, hidden=hidden, layers=layers, heads=heads, rope_theta=rope_theta)
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        bos_token_id=config.text_config.bos_token_id, pad_token_id=config.text_config.pad_token_id,
        eos_token_id=end_token_ids(tokenizer), do_sample=False)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    # Images of up to image_px² pixels: 112 px gives 8x8 patches of 14 px, merged 2x2 into 16 image tokens.
    Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=image_px * image_px).save_pretrained(out)
    return out


def profiler(out: str | None):
    """torch.profiler over steps 2 and 3 of a loop that calls .step() after each step and .stop() at its end: the
    operators that took the most time go to OUT/profile.txt, a trace (chrome://tracing, ui.perfetto.dev) to
    OUT/trace.json. Without `out`, a stand-in that does nothing."""
    if out is None:
        return types.SimpleNamespace(step=lambda: None, stop=lambda: None)
    from torch.profiler import ProfilerActivity, profile, schedule
    cuda = torch.cuda.is_available()

    def write(prof):
        table = prof.key_averages().table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total", row_limit=30)
        with open(os.path.join(out, "profile.txt"), "w") as f:
            f.write(table)
        prof.export_chrome_trace(os.path.join(out, "trace.json"))

    prof = profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else []),
                   schedule=schedule(wait=1, warmup=0, active=2, repeat=1), on_trace_ready=write)
    prof.start()
    return prof


def peak_memory_gb() -> float:
    """Peak GPU memory allocated by torch, or this process's peak resident memory on CPU, in GiB."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    tiny = sub.add_parser("tiny", help="write a random tiny Qwen2.5-VL and its processor (no network)",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    tiny.add_argument("--out", required=True, help="output folder")
    tiny.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    tiny.add_argument("--corpus", nargs="*", default=[], help="JSONL or text files to train the BPE tokenizer on")
    tiny.add_argument("--vocab-size", type=int, default=1024, help="BPE vocabulary size before the special tokens")
    tiny.add_argument("--hidden", type=int, default=64, help="hidden size of the language model")
    tiny.add_argument("--layers", type=int, default=2, help="layers of the language model")
    tiny.add_argument("--heads", type=int, default=4, help="attention heads of the language model")
    tiny.add_argument("--rope-theta", type=float, default=1e4, help="rotary base; Qwen's 1e6 leaves a 16-dim head "
                      "about two frequencies that resolve nearby positions")
    tiny.add_argument("--image-px", type=int, default=112, help="largest image side the processor keeps (pixels)")
    args = parser.parse_args()
    build_tiny(args.out, seed=args.seed, corpus=list(corpus_lines(args.corpus)), vocab_size=args.vocab_size,
               hidden=args.hidden, layers=args.layers, heads=args.heads, rope_theta=args.rope_theta, image_px=args.image_px)
    model, _ = load_model(args.out, device="cpu")
    print(f"wrote {args.out}: Qwen2.5-VL with {count_parameters(model):,} parameters")


if __name__ == "__main__":
    main()
