"""Is sampler.sample exact on this device, for each model family? Greedy, it must give model.generate's tokens; the
log-probs it reports must equal completion_logprobs; with and without its CUDA graph (on GPUs) it must decode the same
tokens. fp32 weights, no autocast, so that exactness is what is checked (tests/test_sampler.py checks the same on CPU,
and the sampling distribution with a statistical test).

    python bench/sampler_check.py [--ckpt DIR | --families qwen2.5-vl qwen3-vl] [--prompts 4] [--group-size 4]
"""
import argparse
import os

import torch
from common import M, data, sampler, tiny_setup
from tiny import FAMILIES


def check(ckpt: str, records: list, args) -> str:
    device = M.default_device()
    policy, processor = M.load_model(ckpt, device=device, dtype=torch.float32)
    tok, T = processor.tokenizer, args.max_new_tokens
    prompt = {k: v.to(device) for k, v in data.prompt_batch(processor, records[:args.prompts]).items()}
    graph = device == "cuda"
    greedy = sampler.sample(policy, processor, prompt, greedy=True, max_new_tokens=T, cuda_graph=graph)["completion_ids"]
    with torch.no_grad():  # greedy, whatever the checkpoint's generation_config.json says
        theirs = policy.generate(**prompt, do_sample=False, top_k=None, top_p=None, temperature=None, max_new_tokens=T,
                                 eos_token_id=sampler.end_token_ids(processor, policy), pad_token_id=tok.pad_token_id,
                                 suppress_tokens=tok.convert_tokens_to_ids(list(M.family(policy).banned)))
    theirs = theirs[:, prompt["input_ids"].shape[1]:][:, :greedy.shape[1]]
    same_greedy = torch.equal(greedy, theirs)
    out = sampler.sample(policy, processor, prompt, group_size=args.group_size, max_new_tokens=T, seed=0, cuda_graph=graph)
    ids, mask = out["completion_ids"], out["completion_mask"]
    with torch.no_grad():
        lp = M.completion_logprobs(policy, M.repeat_prompts(prompt, args.group_size), ids, mask)
    diff = ((lp - out["logprobs"]) * mask).abs().max().item()
    eager = sampler.sample(policy, processor, prompt, group_size=args.group_size, max_new_tokens=T, seed=0, cuda_graph=False)
    same_graph = torch.equal(eager["completion_ids"], ids)
    print(f"{M.family(policy).name}, {M.count_parameters(policy) / 1e6:.1f}M parameters on {device}: greedy tokens "
          f"equal generate's: {same_greedy}; sampled log-probs vs completion_logprobs: max |diff| {diff:.2e}; CUDA "
          f"graph and eager decode the same tokens: {same_graph}")
    return f"{M.family(policy).name}: greedy_equal={int(same_greedy)} logprob_max_diff={diff:.3g} graph_equal={int(same_graph)}"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", help="a model folder (default: a fresh tiny one of each of --families)")
    p.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES), help="tiny models to check "
                   "(default: all: %(default)s)")
    p.add_argument("--prompts", type=int, default=4, help="prompts (default: %(default)s)")
    p.add_argument("--group-size", type=int, default=4, help="samples per prompt (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens (default: %(default)s)")
    args = p.parse_args()
    n_images = max(40, 2 * args.prompts)
    if args.ckpt:
        lines = [check(args.ckpt, tiny_setup(n_images=n_images, build=False)[2], args)]
    else:
        lines = []
        for family in args.families:
            _, _, records, folder = tiny_setup(n_images=n_images, family=family)
            lines.append(check(os.path.join(folder, "tiny"), records, args))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
