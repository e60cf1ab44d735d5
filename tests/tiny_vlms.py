"""A tiny random vision-language model of an architecture this code does not train, with a processor of its own, built
offline (test helper): LLaVA (LLaVA-Med's). It loads with AutoProcessor and AutoModelForImageTextToText like its hub
model, so evaluate.py and cots.py run it as a baseline, through generate. The families that train are tiny.py's."""
import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

from tiny import train_bpe

WORDS = ["<think> </think> <answer> </answer> A B C D USER ASSISTANT model user"]
TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=1024)
# LLaVA-1.5's chat: "USER: <image>\n... ASSISTANT:"
LLAVA_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}\n{% else %}{{ m['role'].upper() }}: "
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{% endif %}{% if m['role'] == 'assistant' %}</s>{% endif %}\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}")


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
