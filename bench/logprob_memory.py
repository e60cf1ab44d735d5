"""Peak memory and time of completion log-probs: ours (logits on the completion positions only) against the naive
full-sequence log-softmax + gather, at growing prompt length and Qwen's real vocabulary (151,936).

    python bench/logprob_memory.py [--prompt-lengths 256 1024 4096] [--completion 256] [--batch 4]

Each measurement runs in a fresh process so that its peak resident memory is its own (on a GPU, the peak of
torch.cuda.max_memory_allocated). Memory is reported above the process's level after loading the model.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def one(variant, prompt_len, completion, batch, vocab):
    """Run in a child process: a text-only forward of a tiny Qwen2.5-VL with the real vocabulary."""
    import resource
    sys.path.insert(0, os.path.dirname(HERE))
    import model as M
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    device = M.default_device()
    config = Qwen2_5_VLConfig(text_config=dict(vocab_size=vocab, hidden_size=256, intermediate_size=512,
                                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                               rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                                                "mrope_section": [12, 10, 10]}),
                              vision_config=dict(depth=1, hidden_size=32, num_heads=2, out_hidden_size=256))
    torch.manual_seed(0)
    net = Qwen2_5_VLForConditionalGeneration(config).to(device).eval()
    prompt = {"input_ids": torch.randint(0, 1000, (batch, prompt_len), device=device),
              "attention_mask": torch.ones(batch, prompt_len, dtype=torch.long, device=device)}
    ids = torch.randint(0, 1000, (batch, completion), device=device)
    mask = torch.ones_like(ids)

    def rss():
        if device == "cuda":
            return torch.cuda.max_memory_allocated()
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    with torch.no_grad():  # warm the allocator on a short input first
        net(input_ids=prompt["input_ids"][:, :8], attention_mask=prompt["attention_mask"][:, :8])
    base = rss()
    t = time.perf_counter()
    with torch.no_grad():
        if variant == "ours":
            M.completion_logprobs(net, prompt, ids, mask)
        else:  # the naive way: logits and an fp32 log-softmax over every position, then gather
            inputs = M.completion_inputs(prompt, ids, mask)
            logps = net(**inputs).logits.float().log_softmax(-1)
            logps[:, prompt_len - 1:-1].gather(2, ids.unsqueeze(2))
    seconds = time.perf_counter() - t
    print(json.dumps({"peak_mb": (rss() - base) / 2**20, "seconds": seconds}))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompt-lengths", type=int, nargs="+", default=[256, 1024, 4096], help="prompt tokens")
    p.add_argument("--completion", type=int, default=256, help="completion tokens (default: %(default)s)")
    p.add_argument("--batch", type=int, default=4, help="sequences (default: %(default)s)")
    p.add_argument("--vocab", type=int, default=151936, help="vocabulary (default: Qwen2.5-VL's %(default)s)")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return one(args.child[0], int(args.child[1]), args.completion, args.batch, args.vocab)
    figures = []
    print(f"batch {args.batch}, completion {args.completion} tokens, vocabulary {args.vocab:,}")
    print(f"{'prompt':>7} | {'ours MB':>9} {'ours s':>8} | {'naive MB':>9} {'naive s':>8}")
    for length in args.prompt_lengths:
        row = {}
        for variant in ("ours", "naive"):
            out = subprocess.run([sys.executable, __file__, "--child", variant, str(length), "--completion",
                                  str(args.completion), "--batch", str(args.batch), "--vocab", str(args.vocab)],
                                 capture_output=True, text=True, check=True)
            row[variant] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{length:>7} | {row['ours']['peak_mb']:>9.0f} {row['ours']['seconds']:>8.3f} | "
              f"{row['naive']['peak_mb']:>9.0f} {row['naive']['seconds']:>8.3f}")
        figures += [f"ours_mb_{length}={row['ours']['peak_mb']:.0f}", f"naive_mb_{length}={row['naive']['peak_mb']:.0f}",
                    f"ours_s_{length}={row['ours']['seconds']:.3f}", f"naive_s_{length}={row['naive']['seconds']:.3f}"]
    print(" ".join(figures))


if __name__ == "__main__":
    main()
