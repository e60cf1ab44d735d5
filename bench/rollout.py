"""Rollout speed: sampler.sample (each prompt prefilled once, a static KV cache, a CUDA graph on GPUs) against a bare
`model.generate` on the same batch, both forced to the full length. On a GPU it also prints the fraction of the
memory-bandwidth bound (each decode step reads every weight once; the bandwidth is measured by a device copy) and
what autocast costs: the sampler on bf16 weights against fp32 weights under bf16 autocast (how a fully fine-tuned
policy samples in train_grpo.py).

    python bench/rollout.py [--size tiny|small|3b] [--prompts 8] [--group-size 8] [--max-new-tokens 64]
    python bench/rollout.py --ckpt DIR       # a model folder instead of a fresh random one (bench/gpu.sh: 3B widths)

The last line holds `name=value` figures.
"""
import argparse
import os
import statistics
import time

import torch
from common import SIZES, M, bandwidth, data, precision, sampler, sync, tiny_setup



def timed(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=SIZES, default="tiny", help="model and image size (default: %(default)s)")
    p.add_argument("--ckpt", help="a model folder to load instead (its data: a fresh synthetic set)")
    p.add_argument("--prompts", type=int, default=8, help="prompts per batch (default: %(default)s)")
    p.add_argument("--group-size", type=int, default=8, help="completions per prompt (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens generated (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs after one warm-up (default: %(default)s)")
    args = p.parse_args()
    device = M.default_device()
    size = SIZES[args.size]
    _, _, records, folder = tiny_setup(n_images=max(40, 2 * args.prompts), **size, build=args.ckpt is None)
    ckpt = args.ckpt or os.path.join(folder, "tiny")
    regime = M.default_precision(device)
    bf16 = regime == "bf16"
    policy, processor = M.load_model(ckpt, device=device, dtype=torch.bfloat16 if bf16 else torch.float32)
    prompt = {k: v.to(device) for k, v in data.prompt_batch(processor, records[:args.prompts]).items()}
    tok, T, G = processor.tokenizer, args.max_new_tokens, args.group_size
    tokens = args.prompts * G * T

    def bare():
        with torch.no_grad():
            policy.generate(**prompt, num_return_sequences=G, max_new_tokens=T, min_new_tokens=T, do_sample=True,
                            top_k=0, temperature=1.0, top_p=1.0, pad_token_id=tok.pad_token_id,
                            eos_token_id=sampler.end_token_ids(processor, policy),
                            suppress_tokens=tok.convert_tokens_to_ids(list(M.family(policy).banned)))

    captured = {}

    def ours(net=policy):
        with precision.autocast(device, regime):
            out = sampler.sample(net, processor, prompt, group_size=G, max_new_tokens=T, min_new_tokens=T, seed=0)
        captured.update(graphs=out["graph_captures"], seconds=out["capture_s"])

    torch.manual_seed(0)
    t_bare, t_ours = timed(bare, args.repeats), timed(ours, args.repeats)
    n_params = M.count_parameters(policy)
    where = torch.cuda.get_device_name() if device == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"{args.prompts} prompts x G={G} x {T} new tokens, {n_params / 1e6:.1f}M parameters, {regime}, {where}")
    print(f"bare generate: {t_bare:.3f} s ({tokens / t_bare:,.0f} tokens/s)   sampler.sample: {t_ours:.3f} s "
          f"({tokens / t_ours:,.0f} tokens/s)   ratio {t_ours / t_bare:.3f}")
    figures = {"generate_s": t_bare, "sample_s": t_ours, "ratio": t_ours / t_bare, "sample_tokens_per_s": tokens / t_ours,
               "graphs_per_call": captured["graphs"], "capture_s_per_call": captured["seconds"]}
    if captured["graphs"]:  # every sample() call captures its buckets' graphs anew (sampler.DecodeGraphs)
        print(f"CUDA graphs: {captured['graphs']} captured a call in {captured['seconds']:.3f} s, "
              f"{captured['seconds'] / t_ours:.1%} of the call")
    if device == "cuda":
        bw = bandwidth()
        weight_bytes = sum(q.numel() * q.element_size() for q in policy.parameters())
        bound = args.prompts * G * bw / weight_bytes  # tokens/s if each step only read the weights once
        fp32 = M.load_model(ckpt, device=device, dtype=torch.float32)[0].requires_grad_(True)
        t_fp32 = timed(lambda: ours(precision.fp32_logits(fp32)), args.repeats)
        print(f"bandwidth {bw / 1e12:.2f} TB/s: bound {bound:,.0f} tokens/s; sampler.sample reaches "
              f"{tokens / t_ours / bound:.1%}. fp32 weights under autocast: {t_fp32:.3f} s ({t_fp32 / t_ours:.2f}x bf16)")
        figures.update(bound_tokens_per_s=bound, bound_fraction=tokens / t_ours / bound, fp32_autocast_s=t_fp32)
    print(" ".join(f"{k}={v:.4g}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
