"""Where a Con-GRPO run's large gradients come from: on completions a trained policy samples, the per-token ratio
r = π_θ/π_SFT of Eq. 8 and the k3 estimator's gradient weight π_SFT/π_θ, as quantiles. A token with r far above 1 + ε
gets no gradient under a positive advantage, but under a negative one min(r·Â, clip(r)·Â) = r·Â: r times a normal
gradient (docs/demo.md, "Towards every task learned").

    python bench/ratio_tail.py --policy runs/demo/grpo --reference runs/demo/sft --data runs/demo/data/train.jsonl

The last line holds `name=value` figures.
"""
import argparse

import numpy as np
import torch
from common import M, data, sampler


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", required=True, help="the trained policy's folder (train_grpo.py --out)")
    p.add_argument("--reference", required=True, help="π_SFT's folder (train_sft.py --out)")
    p.add_argument("--data", required=True, help="the JSONL its prompts come from")
    p.add_argument("--batches", type=int, default=6, help="batches sampled (default: %(default)s)")
    p.add_argument("--prompts", type=int, default=8, help="prompts per batch (default: %(default)s)")
    p.add_argument("--group-size", type=int, default=8, help="completions per prompt, G (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens per completion (default: %(default)s)")
    args = p.parse_args()
    policy, processor = M.load_model(args.policy)
    reference, _ = M.load_model(args.reference)
    records, rng, log_r = data.load_jsonl(args.data), np.random.default_rng(0), []
    for b in range(args.batches):
        prompt = data.prompt_batch(processor, [records[i] for i in rng.choice(len(records), args.prompts, replace=False)])
        with torch.no_grad():
            rollout = sampler.sample(policy, processor, prompt, group_size=args.group_size,
                                     max_new_tokens=args.max_new_tokens, seed=b)
            ids, mask = rollout["completion_ids"], rollout["completion_mask"]
            logps = M.group_logprobs(policy, prompt, ids, mask, args.group_size)
            ref_logps = M.group_logprobs(reference, prompt, ids, mask, args.group_size)
        log_r.append((logps - ref_logps)[mask.bool()])
    log_r = torch.cat(log_r).double()
    figures = {"tokens": len(log_r)}
    for name, x in (("ratio", log_r.exp()), ("k3_weight", (-log_r).exp())):
        q = torch.quantile(x, torch.tensor([0.5, 0.99, 0.999], dtype=torch.double)).tolist()
        figures.update({f"{name}_p50": q[0], f"{name}_p99": q[1], f"{name}_p999": q[2], f"{name}_max": float(x.max())})
        print(f"{name:>9}: median {q[0]:.3g}, 99th percentile {q[1]:.3g}, 99.9th {q[2]:.3g}, max {x.max():.3g}")
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
