"""Per-GPU memory of a full Con-GRPO fine-tune of Qwen2.5-VL-3B with train_grpo.py --fsdp, computed (no GPU needed):
the parameters are counted on the meta device from the real config (bench/real_shapes.py), then multiplied by the
bytes train_grpo.py keeps for each under --precision bf16.

    python bench/fsdp_memory.py [--gpus 1 2 4 8] [--prompts 8] [--group-size 8] [--prompt-tokens 400] [--max-new-tokens 512]

Sharded over N GPUs (divided by N): the policy's weights in fp32 (4 bytes a parameter), the gradients and AdamW's two
moments of the trained ones (4 + 8 bytes; the vision tower is frozen by default), and π_SFT's weights in fp32 (4
bytes). Gathered on every GPU while it samples: the whole policy in fp32 (distributed.unsharded) plus the bf16 casts autocast
keeps of its trained weights; while it judges (--judge self), π_SFT gathered the same way, one after the other. The KV
cache of a rank's share of the rollouts (bf16) comes on top; activations of the loss phase depend on --micro-batch and
--gradient-checkpointing and are not counted.
"""
import argparse

import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from real_shapes import QWEN25_VL_3B

GB = 1e9


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpus", type=int, nargs="+", default=[1, 2, 4, 8], help="GPU counts (default: 1 2 4 8)")
    p.add_argument("--prompts", type=int, default=8, help="prompts per step, over all GPUs (paper: 8)")
    p.add_argument("--group-size", type=int, default=8, help="G (paper: 8)")
    p.add_argument("--prompt-tokens", type=int, default=400, help="prompt length with its image tokens")
    p.add_argument("--max-new-tokens", type=int, default=512, help="completion length (train_grpo.py's default)")
    args = p.parse_args()
    config = Qwen2_5_VLConfig(**QWEN25_VL_3B)
    with torch.device("meta"):
        net = Qwen2_5_VLForConditionalGeneration(config)
    total = sum(q.numel() for q in net.parameters())
    vision = sum(q.numel() for q in net.model.visual.parameters())
    trained = total - vision
    text = config.text_config
    kv_per_token = text.num_hidden_layers * 2 * text.num_key_value_heads * (text.hidden_size // text.num_attention_heads) * 2
    print(f"Qwen2.5-VL-3B: {total / 1e9:.2f}B parameters, {trained / 1e9:.2f}B trained (vision tower frozen), "
          f"KV cache {kv_per_token / 1024:.0f} KiB a token")
    print("\n| GPUs | sharded: weights + grads + AdamW + π_SFT | gathered while sampling | KV cache | peak before activations |")
    print("|---|---|---|---|---|")
    for n in args.gpus:
        sharded = (4 * total + 4 * trained + 8 * trained + 4 * total) / n
        gathered = 4 * total * (n - 1) / n + 2 * trained  # the other ranks' shards, then autocast's bf16 casts
        kv = args.prompts * args.group_size / n * (args.prompt_tokens + args.max_new_tokens) * kv_per_token
        print(f"| {n} | {sharded / GB:.1f} GB | {gathered / GB:.1f} GB | {kv / GB:.1f} GB | "
              f"{(sharded + gathered + kv) / GB:.1f} GB |")


if __name__ == "__main__":
    main()
