"""Decoding π_θ: each prompt prefilled once for its G samples, a static KV cache, a CUDA graph, π_θ's log-probs.

Imports model.py (a family's positions, masks and banned tokens) and precision.py (the LM head's one bf16 copy). Where a
completion ends is here too: the end-of-turn token read off the model's chat template (what SFT targets end with and
R_fmt requires), the completion's mask and text.

    out = sample(policy, processor, prompt, group_size=8, max_new_tokens=512)   # ids, mask, log-probs, texts
    out = decode(model, processor, prompt, greedy=True)   # sample() for a family of model.FAMILIES, else generate()

transformers' `generate` prefills every one of the G copies of a prompt and launches ~1,000 kernels a token from
Python; here a prompt is prefilled once, its keys and values copied to its G rows, and on GPUs a decode step is one
CUDA graph replay. `tests/test_sampler.py` holds it to `generate` (greedy), to a second forward (log-probs) and to
π_θ's distribution (Pearson's χ²).
"""
import time

import torch
from torch.distributed.fsdp import FSDPModule
from transformers import GenerationConfig

import model as M
import precision

BUCKET = 128  # decoding attends over the filled prefix rounded up to a multiple of this many positions


class KVCache:
    """Keys and values of every layer in preallocated buffers, [batch, kv heads, length, head dim], written from
    position `pos` on (a tensor, so that a CUDA graph can replay a decode step), read up to `live` positions (the
    filled prefix, rounded up to a bucket: a step's attention does not span the empty rest): what the attention
    layers of transformers call `update` on."""

    def __init__(self, length: int, pos: int = 0, device=None):
        self.length, self.live, self.keys, self.values = length, length, {}, {}
        self.pos = torch.tensor(pos, device=device)

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        if layer_idx not in self.keys:
            # keys in the dtype attention reads them in: under autocast Qwen's rotary embedding multiplies bf16
            # projections by fp32 cos/sin, so keys arrive fp32 beside bf16 values, and attention casts them to bf16
            # anyway; stored fp32 they would make the cache 1.5x larger and be cast again at every step
            shape = (*key_states.shape[:2], self.length, key_states.shape[3])
            self.keys[layer_idx], self.values[layer_idx] = value_states.new_zeros(shape), value_states.new_zeros(shape)
        where = self.pos + torch.arange(key_states.shape[2], device=key_states.device)
        self.keys[layer_idx].index_copy_(2, where, key_states.to(self.keys[layer_idx].dtype))
        self.values[layer_idx].index_copy_(2, where, value_states)
        return self.keys[layer_idx][:, :, :self.live], self.values[layer_idx][:, :, :self.live]

    def repeat(self, n: int, length: int) -> "KVCache":
        """Each row n times in a row, in buffers of `length` positions: a prompt's keys and values for its G samples."""
        grown = KVCache(length, int(self.pos), self.pos.device)
        for stored, into in ((self.keys, grown.keys), (self.values, grown.values)):
            for i, t in stored.items():
                into[i] = t.new_zeros(t.shape[0] * n, t.shape[1], length, t.shape[3])
                into[i][:, :, :self.length] = t.repeat_interleave(n, 0)
        return grown


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
    forward a token for all rows, on a static KV cache whose filled prefix (in buckets of BUCKET positions) each step
    attends over, on GPUs a CUDA graph a bucket (DecodeGraphs: one shared memory pool, a graph freed as decoding
    moves past its bucket; cuda_graph=None: where it can). The LM head's bf16 copy is made once for the call
    (precision.head_cast_once). Temperature and top-p as given, top-k off, nothing of the checkpoint's
    generation_config.json (Qwen2.5-VL-3B-Instruct's repetition_penalty 1.05 and top_k 1 would make every rollout
    off-policy for Eq. 8). The family's vision tokens are never sampled (a sampled <|image_pad|> breaks the next
    forward's image-token count); no end of turn before min_new_tokens. Returns completion ids [N*G, T] (pad after the
    end), their mask (up to the first end-of-turn token, included), their log-probs under π_θ at temperature 1 [N*G, T] (as
    completion_logprobs gives them), `ended` [N*G] (stopped with an end-of-turn token within max_new_tokens), texts
    (completion_texts: without the final end-of-turn token, every other special token kept, so that R_fmt sees
    them), and the CUDA graphs captured with the seconds they took (`graph_captures`, `capture_s`).
    """
    if seed is not None:
        torch.manual_seed(seed)
    tok, own = processor.tokenizer, M.family(model)
    end_ids = torch.tensor(end_token_ids(processor, model), device=prompt["input_ids"].device)
    (N, P), G, T = prompt["input_ids"].shape, group_size, max_new_tokens
    B, L, device = N * G, P + T, prompt["input_ids"].device

    with precision.head_cast_once(model):  # one bf16 copy of the LM head for the call, every CUDA graph included
        # ---- prefill each prompt once; its keys and values then serve its G rows ----
        valid = prompt["attention_mask"].bool()  # left padding
        positions, start = own.positions(model, prompt)  # and each row's next position
        causal = torch.ones(P, P, dtype=torch.bool, device=device).tril()
        allowed = (causal & valid[:, None, :]) | torch.eye(P, dtype=torch.bool, device=device)  # a pad attends to itself
        prefill = KVCache(P, device=device)
        inputs = M.model_inputs(model, {k: v for k, v in prompt.items() if k != "attention_mask"})
        mask = own.mask(model, allowed[:, None], torch.arange(P, device=device), prompt)
        logits = model(**inputs, position_ids=positions, attention_mask=mask, cache=prefill, use_cache=True,
                       logits_to_keep=1).logits[:, -1].float().repeat_interleave(G, 0)
        cache = prefill.repeat(G, L)
        seen = torch.zeros(B, L, dtype=torch.bool, device=device)  # keys each row may attend to
        seen[:, :P] = valid.repeat_interleave(G, 0)
        start = start.repeat_interleave(G)  # the first new token's position (M-RoPE: all three axes alike)

        # ---- decode: one forward a token for all rows ----
        token_in = torch.zeros(B, 1, dtype=torch.long, device=device)
        position_in = positions[..., :1].repeat_interleave(G, -2)  # [B, 1], or [3, B, 1] for M-RoPE

        def step():  # attends over the live prefix (cache.live): one CUDA graph a bucket; the query is at slot cache.pos
            mask = own.mask(model, seen[:, None, None, :cache.live], cache.pos.view(1))
            return model(input_ids=token_in, position_ids=position_in, cache=cache, use_cache=True, logits_to_keep=1,
                         attention_mask=mask).logits[:, -1].float()

        if cuda_graph is None:  # where it can: on a GPU, a model not sharded (FSDP's hooks run Python at every forward)
            cuda_graph = device.type == "cuda" and not isinstance(model, FSDPModule)
        graphs = DecodeGraphs(step) if cuda_graph else None
        banned = torch.zeros(logits.shape[-1], dtype=torch.bool, device=device)
        banned[tok.convert_tokens_to_ids(list(own.banned))] = True
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
            position_in.copy_((start + t).view(B, 1).expand_as(position_in))
            seen[:, P + t] = True
            cache.pos.fill_(P + t)
            cache.live = min(L, -(-(P + t + 1) // BUCKET) * BUCKET)
            logits = graphs(cache.live) if graphs is not None else None
            if logits is None:  # no graph: this device, FSDP, or a model that cannot be captured
                graphs, logits = None, step()
        mask = end_of_turn_mask(ids[:, :t + 1], end_ids.tolist())
        ids, logps = ids[:, :t + 1].masked_fill(mask == 0, tok.pad_token_id), logps[:, :t + 1] * mask
        return {"completion_ids": ids, "completion_mask": mask, "logprobs": logps, "ended": ended,
                "texts": completion_texts(tok, ids, mask, ended), "graph_captures": graphs.captures if graphs else 0,
                "capture_s": graphs.capture_s if graphs else 0.0}


class DecodeGraphs:
    """CUDA graphs of the decode step, one a bucket of live length, all captured into one memory pool. Decoding only
    moves forward, so a bucket's graph is freed when decoding moves past it, before the next bucket's is captured: one
    graph holds memory at a time. Called with the step's live length, it replays that bucket's graph (capturing it first) and returns its
    logits, or None where the model cannot be captured. Counts its captures and the seconds they took."""

    def __init__(self, step, capture=None, new_pool=None):
        self.step, self.capture = step, capture or _capture
        self.new_pool = new_pool or torch.cuda.graph_pool_handle
        self.pool = self.live = self.graph = self.out = None
        self.captures, self.capture_s = 0, 0.0

    def __call__(self, live: int):
        if live != self.live:
            self.graph = self.out = None  # the last bucket's graph: freed, its memory back in the shared pool
            self.pool = self.pool or self.new_pool()
            start = time.perf_counter()
            self.graph, self.out = self.capture(self.step, self.pool)
            self.capture_s += time.perf_counter() - start
            self.captures, self.live = self.captures + 1, live
        if self.graph is None:
            return None
        self.graph.replay()  # self.out is read before the next replay overwrites it
        return self.out


def _capture(step, pool):
    """(a CUDA graph of step() in the memory pool `pool`, its output buffer), or (None, None) where the model cannot
    be captured: one replay then runs the whole decode step, every kernel at once, instead of ~1,000 launches from
    Python."""
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # warm up: cuBLAS workspaces, autocast's cached casts (the step writes the same keys)
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            out = step()
        return graph, out
    except RuntimeError as e:  # a host sync or a CPU-side branch inside the model: decode without the graph
        print(f"sampler.sample: decoding without a CUDA graph ({type(e).__name__}: {str(e)[:200]})")
        return None, None


# ---- where a completion ends, and its text ----

def end_of_turn(processor) -> str:
    """The token that closes an assistant turn in the model's own chat template (<|im_end|> for Qwen, <end_of_turn>
    for Gemma): what SFT targets end with, sampling stops at and R_fmt requires."""
    tokenizer = getattr(processor, "tokenizer", processor)
    mark = "MEDADR1MARK"
    chat = [{"role": "user", "content": [{"type": "text", "text": "Q"}]},
            {"role": "assistant", "content": [{"type": "text", "text": mark}]}]
    after = processor.apply_chat_template(chat, tokenize=False).split(mark)[-1]
    ids = tokenizer(after, add_special_tokens=False)["input_ids"]
    if not ids or ids[0] not in tokenizer.all_special_ids + [t for t, a in tokenizer.added_tokens_decoder.items()
                                                             if a.special]:
        raise ValueError(f"the chat template closes an assistant turn with {after!r}, not a special token")
    return tokenizer.convert_ids_to_tokens(ids[0])


def end_token_ids(processor, model=None) -> list[int]:
    """The tokens that end a completion: the template's end of turn, the checkpoint's end-of-sequence ids (its
    generation_config.json) and the tokenizer's."""
    tokenizer = getattr(processor, "tokenizer", processor)
    eos = model.generation_config.eos_token_id if model is not None else None
    ids = [tokenizer.convert_tokens_to_ids(end_of_turn(processor)), *([eos] if isinstance(eos, int) else eos or [])]
    return list(dict.fromkeys(ids + ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])))


def end_of_turn_mask(ids: torch.Tensor, end_ids: list[int]) -> torch.Tensor:
    """1 up to and including the first end-of-turn token of each row, 0 after it: [B, T] long."""
    is_end = torch.isin(ids, torch.tensor(end_ids, device=ids.device))
    ended_before = (is_end.cumsum(1) - is_end.long()) > 0
    return (~ended_before).long()


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


# ---- the plain path: any vision-language model transformers can run ----

@torch.no_grad()
def generate(model, processor, prompt: dict, *, group_size: int = 1, max_new_tokens: int = 256,
             temperature: float = 1.0, top_p: float = 1.0, greedy: bool = False, seed: int | None = None) -> dict:
    """G completions per prompt through transformers' `generate`, for a model the fast sampler does not run (a baseline
    row of Table 1, the describer of cots.py): the same rows, mask, `ended` and texts as sample(), no log-probs.
    Decoded as sample() decodes: temperature and top-p as given, top-k off, nothing else of the checkpoint's
    generation settings but its end tokens; no special token but those (an image token breaks some models' next
    forward)."""
    if seed is not None:
        torch.manual_seed(seed)
    tok = processor.tokenizer
    ends = end_token_ids(processor, model)
    pad = tok.pad_token_id if tok.pad_token_id is not None else ends[0]
    banned = [[t] for t in sorted(set(tok.all_special_ids) - set(ends) - {pad})]
    config = GenerationConfig(do_sample=not greedy, temperature=temperature, top_p=top_p, top_k=0, max_new_tokens=max_new_tokens,
                              num_return_sequences=group_size, eos_token_id=ends, pad_token_id=pad,
                              bad_words_ids=banned or None)
    own, model.generation_config = model.generation_config, config  # generate would fill unset fields from its own
    try:
        out = model.generate(**prompt, generation_config=config)[:, prompt["input_ids"].shape[1]:]
    finally:
        model.generation_config = own
    mask = end_of_turn_mask(out, ends)
    ended = torch.isin(out, torch.tensor(ends, device=out.device)).any(1)
    ids = out.masked_fill(mask == 0, pad)
    return {"completion_ids": ids, "completion_mask": mask, "ended": ended, "texts": completion_texts(tok, ids, mask, ended)}


def decode(model, processor, prompt: dict, **kwargs) -> dict:
    """sample() for a family of model.FAMILIES, the fast path; generate() for any other vision-language model."""
    fast = model.config.model_type in M.FAMILIES
    return (sample if fast else generate)(model, processor, prompt, **kwargs)
