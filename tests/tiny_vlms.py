"""Tiny random vision-language models of two other architectures, each with a processor of its own, built offline
(test helper): Gemma 3 (MedGemma's architecture) and LLaVA (LLaVA-Med's). They load with AutoProcessor and
AutoModelForImageTextToText like their hub models, so evaluate.py and cots.py run them as they would the real ones."""
import torch
from transformers import (Gemma3Config, Gemma3ForConditionalGeneration, Gemma3Processor, LlavaConfig,
                          LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast)
from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

from tiny import train_bpe

WORDS = ["<think> </think> <answer> </answer> A B C D USER ASSISTANT model user"]
TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=1024)
# Gemma 3's chat: the system message joins the first user turn; an image is <start_of_image>, which the processor
# expands to the image's soft tokens
GEMMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] != 'system' %}"
    "<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{% if loop.index0 == 1 and messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}\n\n{% endif %}"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<start_of_image>{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_turn>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
# LLaVA-1.5's chat: "USER: <image>\n... ASSISTANT:"
LLAVA_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}\n{% else %}{{ m['role'].upper() }}: "
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{% endif %}{% if m['role'] == 'assistant' %}</s>{% endif %}\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}")


def build_gemma3(out: str, corpus=(), seed: int = 0) -> str:
    torch.manual_seed(seed)
    special = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>",
               "<end_of_image>", "<image_soft_token>"]
    tok = PreTrainedTokenizerFast(tokenizer_object=train_bpe([*WORDS, *corpus], 600, special), bos_token="<bos>",
                                  eos_token="<eos>", pad_token="<pad>", unk_token="<unk>", padding_side="left",
                                  extra_special_tokens={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                                                        "image_token": "<image_soft_token>"})
    ids = tok.convert_tokens_to_ids
    processor = Gemma3Processor(Gemma3ImageProcessorPil(size={"height": 56, "width": 56}), tok,
                                chat_template=GEMMA3_TEMPLATE, image_seq_length=4)
    config = Gemma3Config(
        text_config=dict(vocab_size=len(tok), head_dim=16, sliding_window=64, pad_token_id=ids("<pad>"),
                         eos_token_id=[ids("<eos>"), ids("<end_of_turn>")], bos_token_id=ids("<bos>"), **TEXT),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=56, patch_size=14),
        mm_tokens_per_image=4, boi_token_index=ids("<start_of_image>"), eoi_token_index=ids("<end_of_image>"),
        image_token_index=ids("<image_soft_token>"))
    Gemma3ForConditionalGeneration(config).save_pretrained(out)
    processor.save_pretrained(out)
    return out


def build_llava(out: str, corpus=(), seed: int = 0) -> str:
    torch.manual_seed(seed)
    special = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
    tok = PreTrainedTokenizerFast(tokenizer_object=train_bpe([*WORDS, *corpus], 600, special),
                                  bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                                  padding_side="left", extra_special_tokens={"image_token": "<image>"})
    ids = tok.convert_tokens_to_ids
    image_processor = LlavaImageProcessorPil(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
    processor = LlavaProcessor(image_processor, tok, patch_size=14, vision_feature_select_strategy="default",
                               chat_template=LLAVA_TEMPLATE, num_additional_image_tokens=1)
    config = LlavaConfig(
        text_config=dict(model_type="llama", vocab_size=len(tok), pad_token_id=ids("<pad>"), eos_token_id=ids("</s>"),
                         bos_token_id=ids("<s>"), **TEXT),
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=56, patch_size=14, projection_dim=32),
        image_token_index=ids("<image>"), vision_feature_select_strategy="default", vision_feature_layer=-1)
    LlavaForConditionalGeneration(config).save_pretrained(out)
    processor.save_pretrained(out)
    return out
