"""The tiny offline models and their tokenizers: random model folders that load like the hub's Instruct checkpoints.

A real `Qwen2_5_VLForConditionalGeneration` (or `Qwen3VLForConditionalGeneration`, `Gemma3ForConditionalGeneration`)
with random weights, a BPE tokenizer trained offline with the family's special tokens in its order, its real chat
template (templates/), and its real preprocessor and generation settings with the geometry shrunk.

Imports nothing from the project.

    python tiny.py --out runs/tiny --corpus runs/data/train.jsonl                      # a random tiny Qwen2.5-VL
    python tiny.py --out runs/tiny3 --corpus runs/data/train.jsonl --family qwen3-vl   # a random tiny Qwen3-VL
    python tiny.py --out runs/gemma --corpus runs/data/train.jsonl --family gemma3     # Gemma 3 (MedGemma's)

Every code path (processor, M-RoPE, vision tower, deepstack, LoRA, the sampler) is the one the real models run
through, so the tests and the CPU demo exercise the real code without downloading anything.
"""
import argparse
import glob
import json
import math
import os

import torch
from transformers import (Gemma3Config, Gemma3ForConditionalGeneration, GenerationConfig, Qwen2_5_VLConfig,
                          Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer, Qwen3VLConfig,
                          Qwen3VLForConditionalGeneration)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil


TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
# The special tokens of Qwen2.5-VL, in Qwen's order (ids follow the BPE vocabulary, as in Qwen's tokenizer).
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                  "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                  "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
                  "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
                  "<|repo_name|>", "<|file_sep|>"]
# Qwen3-VL's added tokens (ids 151643-151668 of its tokenizer): the first 14 special, the rest, <think> and </think>
# among them, added but not special (skip_special_tokens keeps them). Evidence: docs/families.md, "Qwen3-VL".
QWEN3_TOKENS = SPECIAL_TOKENS + ["<tool_response>", "</tool_response>", "<think>", "</think>"]
QWEN3_SPECIAL = 14
# Qwen2's pre-tokenizer split (digits one by one, words with their leading space or punctuation).
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")
# google/gemma-3-4b-it's special tokens: <pad> <eos> <bos> <unk> <mask> are its ids 0-4, the turns 105-106, the image
# tokens its last ids (255999, 256000, 262144). Evidence: docs/families.md, "Gemma 3".
GEMMA3_SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
GEMMA3_IMAGE = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
FAMILIES = ("qwen2.5-vl", "qwen3-vl", "gemma3")


def chat_template(family: str) -> str:
    """The family's chat template as its hub checkpoint ships it (templates/, each file cited in docs/families.md)."""
    return open(os.path.join(TEMPLATES, f"{family}.jinja"), encoding="utf-8").read()


def train_bpe(corpus, vocab_size: int, special_tokens: list[str], added_tokens=()):
    """A byte-level BPE (a `tokenizers.Tokenizer`) with Qwen2's pre-tokenizer, trained offline on `corpus`, its special
    tokens (then any added, not special, tokens) after the vocabulary as in Qwen's tokenizer."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    bpe = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(corpus, trainer)
    bpe.add_special_tokens(special_tokens)
    bpe.add_tokens([AddedToken(t, special=False, normalized=False) for t in added_tokens])
    return bpe


def train_gemma3_tokenizer(corpus, vocab_size: int = 1024):
    """Gemma 3's tokenizer in miniature: transformers' GemmaTokenizer (BPE with byte fallback, spaces as "▁", <bos> before
    every text, padding on the left) over vocabulary and merges trained offline, its special tokens first, the 256 byte
    pieces, the trained ones, its image tokens last."""
    from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import GemmaTokenizer
    bpe = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    bpe.normalizer = normalizers.Replace(" ", "▁")
    bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")  # merges within a word
    pieces = GEMMA3_SPECIAL + [f"<0x{i:02X}>" for i in range(256)]  # SentencePiece's byte-fallback pieces
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab_size + len(pieces), special_tokens=pieces,
                                                        show_progress=False))
    trained = json.loads(bpe.to_str())["model"]
    vocab = {**trained["vocab"], **{t: len(trained["vocab"]) + i for i, t in enumerate(GEMMA3_IMAGE.values())}}
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in trained["merges"]]
    tokenizer = GemmaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, padding_side="left",
                               extra_special_tokens=GEMMA3_IMAGE)
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in GEMMA3_SPECIAL[5:]],
                         special_tokens=True)
    return tokenizer


def train_tokenizer(corpus, vocab_size: int = 1024, family: str = "qwen2.5-vl"):
    """The family's tokenizer in miniature: a byte-level BPE trained offline with its special tokens."""
    if family == "gemma3":
        return train_gemma3_tokenizer(corpus, vocab_size)
    special, added = (QWEN3_TOKENS[:QWEN3_SPECIAL], QWEN3_TOKENS[QWEN3_SPECIAL:]) if family == "qwen3-vl" else \
        (SPECIAL_TOKENS, [])
    return Qwen2Tokenizer(tokenizer_object=train_bpe(corpus, vocab_size, special, added), eos_token="<|im_end|>",
                          pad_token="<|endoftext|>", bos_token=None, unk_token=None, padding_side="left", errors="replace",
                          model_max_length=32768, clean_up_tokenization_spaces=False, split_special_tokens=False)


# Qwen/Qwen2.5-VL-3B-Instruct's config.json, special token ids aside (a tokenizer's own go in): --preset qwen2.5-vl-3b
QWEN25_VL_3B = dict(
    text_config=dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                     num_attention_heads=16, num_key_value_heads=2, max_position_embeddings=128000, rms_norm_eps=1e-6,
                     rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
                     tie_word_embeddings=True),
    vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, patch_size=14,
                       spatial_merge_size=2, temporal_patch_size=2, window_size=112, out_hidden_size=2048,
                       fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2),
    tie_word_embeddings=True)


def token_ids(tokenizer) -> dict:
    """The config's special token ids, the tokenizer's own."""
    ids = tokenizer.convert_tokens_to_ids
    return dict(image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
                vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))


def text_ids(tokenizer) -> dict:
    ids = tokenizer.convert_tokens_to_ids
    return dict(bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>"), pad_token_id=ids("<|endoftext|>"))


def real_config(tokenizer) -> Qwen2_5_VLConfig:
    """Qwen2.5-VL-3B-Instruct's architecture (3.75B parameters, the 151,936-row vocabulary) over a small tokenizer:
    random weights at the real shapes, for benchmarks (sampled ids the tokenizer lacks decode to nothing)."""
    return Qwen2_5_VLConfig(text_config={**QWEN25_VL_3B["text_config"], **text_ids(tokenizer)},
                            vision_config=QWEN25_VL_3B["vision_config"], tie_word_embeddings=True, **token_ids(tokenizer))


# Initialisation of the tiny models. With the usual 0.02 the tied output layer keeps every logit within about ±1, a
# LoRA (which cannot change it) stalls at a loss of ~5.5 on 8 examples, and a tiny random model answers the same for
# every image; 0.3 lets it reach ~0.001, as a pretrained model would. The tower at 0.05, not 0.02: image tokens then
# leave the merger at about the scale of the text embeddings (std ~0.4 vs 0.3; 0.06 at 0.02), not drowned in the
# residual stream.
TEXT_INIT, VISION_INIT = 0.3, 0.05


def tiny_config(tokenizer, hidden: int = 64, layers: int = 2, heads: int = 4, vision_hidden: int = 64,
                vision_layers: int = 1, rope_theta: float = 1e4, vision_heads: int = 2) -> Qwen2_5_VLConfig:
    head_dim = hidden // heads
    half = head_dim // 2  # M-RoPE splits head_dim/2 frequencies over (time, height, width)
    mrope = [half - 2 * (half // 3), half // 3, half // 3]
    return Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
                         max_position_embeddings=4096, rms_norm_eps=1e-6, tie_word_embeddings=True,
                         rope_parameters={"rope_type": "default", "rope_theta": rope_theta, "mrope_section": mrope},
                         initializer_range=TEXT_INIT, **text_ids(tokenizer)),
        vision_config=dict(depth=vision_layers, hidden_size=vision_hidden, intermediate_size=2 * vision_hidden,
                           num_heads=vision_heads, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                           window_size=112, out_hidden_size=hidden, fullatt_block_indexes=list(range(vision_layers)),
                           initializer_range=VISION_INIT),
        tie_word_embeddings=True, **token_ids(tokenizer), initializer_range=TEXT_INIT)


def tiny_qwen3_config(tokenizer, hidden: int = 64, layers: int = 2, heads: int = 4, vision_hidden: int = 64,
                      vision_layers: int = 2, rope_theta: float = 1e4, vision_heads: int = 2,
                      image_px: int = 128) -> Qwen3VLConfig:
    """Qwen3-VL-2B/4B-Instruct's config.json (docs/families.md) shrunk. Set where a default would hide what the real
    model does: head_dim (a default of 128), mrope_section in the real 24:20:20 proportion with the real interleaving
    (a missing one falls back to [24, 20, 20], another split), deepstack layers that fire in a tower of 2-3 blocks
    (the real [5, 11, 17] of 24 never fire in one), a learned position grid of the tiny image's side."""
    head_dim = hidden // heads
    half = head_dim // 2
    hw = half * 20 // 64
    return Qwen3VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=3 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
                         head_dim=head_dim, max_position_embeddings=4096, rms_norm_eps=1e-6, tie_word_embeddings=True,
                         rope_parameters={"rope_type": "default", "rope_theta": rope_theta,
                                          "mrope_section": [half - 2 * hw, hw, hw], "mrope_interleaved": True},
                         initializer_range=TEXT_INIT, bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
                         eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>")),
        vision_config=dict(depth=vision_layers, hidden_size=vision_hidden, intermediate_size=4 * vision_hidden,
                           num_heads=vision_heads, patch_size=16, spatial_merge_size=2, temporal_patch_size=2,
                           out_hidden_size=hidden, num_position_embeddings=(image_px // 16) ** 2,
                           deepstack_visual_indexes=list(range(min(3, vision_layers, layers))),
                           initializer_range=VISION_INIT),
        tie_word_embeddings=True, **token_ids(tokenizer))


def tiny_gemma3_config(tokenizer, hidden: int = 64, layers: int = 2, heads: int = 4, vision_hidden: int = 64,
                       vision_layers: int = 2, vision_heads: int = 2, image_px: int = 112, window: int = 128,
                       rope_theta: float | None = None) -> Gemma3Config:  # rope_theta: Gemma 3 keeps its two
    """google/gemma-3-4b-it's config.json and the defaults it leaves to transformers (docs/families.md) shrunk: a SigLIP
    tower of image_px images in 14-px patches average-pooled into 16 soft tokens (the real 4x4 pool of 896 px into
    256), head_dim and query_pre_attn_scalar set (defaults of 256), the real rope of each kind of layer, and
    sliding-window layers with a global one every sixth and last (the real pattern alone gives a 2-layer model none)
    whose window (128, the real 1,024) is shorter than a prompt with its completion."""
    ids = tokenizer.convert_tokens_to_ids
    head_dim = hidden // heads
    kinds = ["full_attention" if (i + 1) % 6 == 0 or i == layers - 1 else "sliding_attention" for i in range(layers)]
    return Gemma3Config(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
                         head_dim=head_dim, query_pre_attn_scalar=head_dim, sliding_window=window, layer_types=kinds,
                         rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                                          "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}},
                         max_position_embeddings=4096, initializer_range=TEXT_INIT, pad_token_id=ids("<pad>"),
                         eos_token_id=ids("<eos>"), bos_token_id=ids("<bos>")),
        vision_config=dict(hidden_size=vision_hidden, intermediate_size=4 * vision_hidden, num_hidden_layers=vision_layers,
                           num_attention_heads=vision_heads, image_size=image_px, patch_size=14, vision_use_head=False,
                           initializer_range=VISION_INIT),
        mm_tokens_per_image=16, boi_token_index=ids(GEMMA3_IMAGE["boi_token"]), image_token_index=ids(
            GEMMA3_IMAGE["image_token"]), eoi_token_index=ids(GEMMA3_IMAGE["eoi_token"]),
        eos_token_id=[ids("<eos>"), ids("<end_of_turn>")], initializer_range=TEXT_INIT)


def gemma3_init(model):
    """Gemma's RMSNorms scale by (1 + weight), the weight at 0: each layer then writes a unit-RMS update beside
    embeddings scaled by sqrt(hidden), q and k are normed, attention is near uniform, and a tiny random Gemma echoes its
    last token whatever the image (measured); transformers also starts the projector at zeros, so the image cannot
    matter at all. Layers that write 9x (post-attention and post-feed-forward norms at 8), scores 4x sharper (q and k
    norms at 1) and a random projector: the greedy answer then depends on the image."""
    with torch.no_grad():
        for layer in model.model.language_model.layers:
            layer.post_attention_layernorm.weight.fill_(8.0)
            layer.post_feedforward_layernorm.weight.fill_(8.0)
            layer.self_attn.q_norm.weight.fill_(1.0)
            layer.self_attn.k_norm.weight.fill_(1.0)
        torch.nn.init.normal_(model.model.multi_modal_projector.mm_input_projection_weight, std=0.1)


def processor_files(out: str, family: str, image_px: int):
    """The preprocessor settings of the family's hub checkpoint (docs/families.md), images bounded to image_px²."""
    if family == "qwen2.5-vl":  # Images of up to image_px² pixels: 112 px gives 8x8 patches of 14 px, 16 tokens
        Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=image_px * image_px).save_pretrained(out)
    elif family == "gemma3":  # google/gemma-3-4b-it's preprocessor_config.json and processor_config.json, 896 px shrunk
        common = {"image_seq_length": 16, "processor_class": "Gemma3Processor"}
        json.dump(common, open(os.path.join(out, "processor_config.json"), "w"), indent=2)
        json.dump({"do_convert_rgb": None, "do_normalize": True, "do_pan_and_scan": None, "do_rescale": True,
                   "do_resize": True, "image_mean": [0.5, 0.5, 0.5], "image_processor_type": "Gemma3ImageProcessor",
                   "image_std": [0.5, 0.5, 0.5], "pan_and_scan_max_num_crops": None, "pan_and_scan_min_crop_size": None,
                   "pan_and_scan_min_ratio_to_activate": None, "resample": 2, "rescale_factor": 1 / 255,
                   "size": {"height": image_px, "width": image_px}, **common},
                  open(os.path.join(out, "preprocessor_config.json"), "w"), indent=2)
    else:  # Qwen3-VL-2B/4B-Instruct's preprocessor_config.json and video_preprocessor_config.json, sizes (pixel
        # counts) shrunk from 256²..4096²: 128 px gives 8x8 patches of 16 px, merged 2x2 into 16 image tokens
        common = {"patch_size": 16, "temporal_patch_size": 2, "merge_size": 2, "image_mean": [0.5, 0.5, 0.5],
                  "image_std": [0.5, 0.5, 0.5], "processor_class": "Qwen3VLProcessor"}
        for name, size, kind in (("preprocessor_config.json", 32 * 32, {"image_processor_type": "Qwen2VLImageProcessorFast"}),
                                 ("video_preprocessor_config.json", 16 * 16, {"video_processor_type": "Qwen3VLVideoProcessor"})):
            settings = {"size": {"longest_edge": image_px * image_px, "shortest_edge": size}, **common, **kind}
            json.dump(settings, open(os.path.join(out, name), "w"), indent=4)


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


def generation_config(family: str, tokenizer) -> GenerationConfig:
    """The family's generation_config.json (its chat settings: the sampler decodes π_θ itself, not these)."""
    ids = tokenizer.convert_tokens_to_ids
    if family == "gemma3":  # google/gemma-3-4b-it's: <eos> and <end_of_turn> end a turn, sampled at top-k 64
        return GenerationConfig(bos_token_id=ids("<bos>"), pad_token_id=ids("<pad>"), cache_implementation="hybrid",
                                eos_token_id=[ids("<eos>"), ids("<end_of_turn>")], do_sample=True, top_k=64, top_p=0.95)
    ends = [ids("<|im_end|>"), ids("<|endoftext|>")]
    if family == "qwen3-vl":  # Qwen3-VL-2B/4B-Instruct's
        return GenerationConfig(bos_token_id=ends[1], pad_token_id=ends[1], eos_token_id=ends, do_sample=True, top_k=20,
                                top_p=0.8, repetition_penalty=1.0, temperature=0.7)
    return GenerationConfig(bos_token_id=ends[1], pad_token_id=ends[1], eos_token_id=ends, do_sample=False)


def build_tiny(out: str, *, family: str = "qwen2.5-vl", seed: int = 0, corpus=(), vocab_size: int = 1024,
               hidden: int = 64, layers: int = 2, heads: int = 4, rope_theta: float = 1e4, image_px: int | None = None,
               dtype: torch.dtype = torch.float32, device: str = "cpu", preset: str | None = None,
               vision_hidden: int = 64, vision_layers: int | None = None, vision_heads: int = 2) -> str:
    """Write a randomly initialised tiny model of `family` and its processor to `out`; loads like the hub model. Built
    on `device` and written in `dtype` (the 3.75B model of preset="qwen2.5-vl-3b" initialises in seconds on a GPU and
    takes half the disk in bf16). image_px: 112 for Qwen2.5-VL and Gemma 3, 128 for Qwen3-VL (16 image tokens)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}: one of {', '.join(FAMILIES)}")
    torch.manual_seed(seed)
    image_px = image_px or (128 if family == "qwen3-vl" else 112)
    words = "<think> </think> <answer> </answer> A B C D" + (" user model" if family == "gemma3" else "")
    tokenizer = train_tokenizer([words, *corpus], vocab_size, family)
    tokenizer.chat_template = chat_template(family)
    size = dict(hidden=hidden, layers=layers, heads=heads, rope_theta=rope_theta, vision_hidden=vision_hidden,
                vision_heads=vision_heads, vision_layers=vision_layers or (1 if family == "qwen2.5-vl" else 2))
    config, net = {"qwen2.5-vl": (tiny_config, Qwen2_5_VLForConditionalGeneration),
                   "qwen3-vl": (tiny_qwen3_config, Qwen3VLForConditionalGeneration),
                   "gemma3": (tiny_gemma3_config, Gemma3ForConditionalGeneration)}[family]
    config = real_config(tokenizer) if preset == "qwen2.5-vl-3b" else \
        config(tokenizer, **size, **({} if family == "qwen2.5-vl" else {"image_px": image_px}))
    with torch.device(device):
        model = net(config).to(dtype)
    if family == "gemma3":
        gemma3_init(model)
    model.generation_config = generation_config(family, tokenizer)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    processor_files(out, family, image_px)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--family", choices=FAMILIES, default="qwen2.5-vl", help="the architecture, its tokenizer, chat "
                   "template and processor (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default: %(default)s)")
    p.add_argument("--corpus", nargs="*", default=[], help="JSONL or text files to train the BPE tokenizer on")
    p.add_argument("--vocab-size", type=int, default=1024, help="BPE vocabulary size before the special tokens "
                   "(default: %(default)s)")
    p.add_argument("--hidden", type=int, default=64, help="hidden size of the language model (default: %(default)s)")
    p.add_argument("--layers", type=int, default=2, help="layers of the language model (default: %(default)s)")
    p.add_argument("--heads", type=int, default=4, help="attention heads of the language model (default: %(default)s)")
    p.add_argument("--vision-hidden", type=int, default=64, help="width of the vision tower (default: %(default)s)")
    p.add_argument("--vision-layers", type=int, help="blocks of the vision tower (default: 1 for qwen2.5-vl, 2 for "
                   "qwen3-vl, whose deepstack features come from them, and gemma3)")
    p.add_argument("--vision-heads", type=int, default=2, help="attention heads of the vision tower (default: "
                   "%(default)s)")
    p.add_argument("--rope-theta", type=float, default=1e4, help="rotary base of the Qwen families; Qwen's 1e6 leaves "
                   "a 16-dim head about two frequencies that resolve nearby positions; Gemma 3 keeps its own two "
                   "(default: %(default)s)")
    p.add_argument("--image-px", type=int, help="largest image side the processor keeps, in pixels (default: 112 for "
                   "qwen2.5-vl and gemma3, 128 for qwen3-vl: 16 image tokens)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="weights as written (default: "
                   "%(default)s; bfloat16 halves the disk of a large one)")
    p.add_argument("--device", default="cpu", help="where the random weights are made (cuda: seconds for billions; "
                   "default: %(default)s)")
    p.add_argument("--preset", choices=["qwen2.5-vl-3b"], help="Qwen2.5-VL-3B-Instruct's real architecture (3.75B "
                   "parameters, its 151,936-row vocabulary and 32-block vision tower) with random weights, instead of "
                   "--hidden/--layers/--heads: for benchmarks at the real shapes (make it with --device cuda --dtype "
                   "bfloat16)")
    args = p.parse_args(argv)
    if args.preset and args.family != "qwen2.5-vl":
        p.error("--preset qwen2.5-vl-3b builds a Qwen2.5-VL: drop --family or --preset")
    build_tiny(args.out, family=args.family, seed=args.seed, corpus=list(corpus_lines(args.corpus)),
               vocab_size=args.vocab_size, hidden=args.hidden, layers=args.layers, heads=args.heads,
               rope_theta=args.rope_theta, image_px=args.image_px, dtype=getattr(torch, args.dtype), device=args.device,
               preset=args.preset, vision_hidden=args.vision_hidden, vision_layers=args.vision_layers,
               vision_heads=args.vision_heads)
    from safetensors import safe_open  # counted from the files' headers: nothing is loaded back
    count = 0
    for file in glob.glob(os.path.join(args.out, "*.safetensors")):
        with safe_open(file, "pt") as f:
            count += sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())
    print(f"wrote {args.out}: {args.family} with {count:,} parameters ({args.dtype})")


if __name__ == "__main__":
    main()
