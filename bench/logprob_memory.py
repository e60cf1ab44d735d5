"""Peak memory and time of completion log-probs: ours (model.completion_logprobs: the LM head on the completion
positions only, a chunk of LOGITS_CHUNK logits at a time, made again in backward) against the completion's logits made
at once, and the naive full-sequence log-softmax + gather, at growing prompt length and a real vocabulary (Qwen's
151,936; Gemma 3's 262,208 with --vocab 262208), with the backward pass (--grad) as training runs it or without.

    python bench/logprob_memory.py [--prompt-lengths 256 1024 4096] [--completion 256] [--batch 4] [--vocab N] [--grad]

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


def one(variant, prompt_len, completion, batch, vocab, grad):
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
    net = Qwen2_5_VLForConditionalGeneration(config).to(device).eval().requires_grad_(grad)
    prompt = {"input_ids": torch.randint(0, 1000, (batch, prompt_len), device=device),
              "attention_mask": torch.ones(batch, prompt_len, dtype=torch.long, device=device),
              "mm_token_type_ids": torch.zeros(batch, prompt_len, dtype=torch.long, device=device)}
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
    with torch.set_grad_enabled(grad):
        if variant == "ours":
            logps = M.completion_logprobs(net, prompt, ids, mask)
        else:  # the completion's logits at once ("completion") or every position's ("naive"), an fp32 log-softmax, gather
            inputs = M.completion_inputs(prompt, ids, mask)
            keep = torch.arange(prompt_len - 1, prompt_len + completion - 1, device=device) if variant == "completion" else 0
            logps = net(**inputs, logits_to_keep=keep).logits.float().log_softmax(-1)
            logps = logps[:, -completion:] if variant == "completion" else logps[:, prompt_len - 1:-1]
            logps = logps.gather(2, ids.unsqueeze(2))
        if grad:
            logps.sum().backward()
    seconds = time.perf_counter() - t
    print(json.dumps({"peak_mb": (rss() - base) / 2**20, "seconds": seconds}))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompt-lengths", type=int, nargs="+", default=[256, 1024, 4096], help="prompt tokens")
    p.add_argument("--completion", type=int, default=256, help="completion tokens (default: %(default)s)")
    p.add_argument("--batch", type=int, default=4, help="sequences (default: %(default)s)")
    p.add_argument("--vocab", type=int, default=151936, help="vocabulary (default: Qwen2.5-VL's %(default)s; Gemma 3's "
                   "is 262208)")
    p.add_argument("--grad", action="store_true", help="with the backward pass, as the loss runs (default: no_grad)")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return one(args.child[0], int(args.child[1]), args.completion, args.batch, args.vocab, args.grad)
    figures, variants = [], ("ours", "completion", "naive")
    print(f"batch {args.batch}, completion {args.completion} tokens, vocabulary {args.vocab:,}, "
          f"{'forward and backward' if args.grad else 'no_grad'}: peak MB above the loaded model, seconds")
    print(f"{'prompt':>7} | " + " | ".join(f"{v + ' MB':>13} {v + ' s':>12}" for v in variants))
    for length in args.prompt_lengths:
        row = {}
        for variant in variants:
            out = subprocess.run([sys.executable, __file__, "--child", variant, str(length), "--completion",
                                  str(args.completion), "--batch", str(args.batch), "--vocab", str(args.vocab),
                                  *(["--grad"] if args.grad else [])], capture_output=True, text=True, check=True)
            row[variant] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{length:>7} | " + " | ".join(f"{row[v]['peak_mb']:>13.0f} {row[v]['seconds']:>12.3f}" for v in variants))
        figures += [f"{v}_mb_{length}={row[v]['peak_mb']:.0f} {v}_s_{length}={row[v]['seconds']:.3f}" for v in variants]
    print(" ".join(figures))


if __name__ == "__main__":
    main()
