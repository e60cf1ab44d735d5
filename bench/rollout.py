"""Our group sampling (model.sample) against a bare `model.generate` on the same batch.

    python bench/rollout.py [--prompts 8] [--group-size 8] [--max-new-tokens 64]

Prints the median seconds of each and their ratio; the last line is `name=value` figures.
"""
import argparse
import statistics
import time

import torch
from common import M, data, tiny_setup

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--prompts", type=int, default=8, help="prompts per batch (default: %(default)s)")
p.add_argument("--group-size", type=int, default=8, help="completions per prompt (default: %(default)s)")
p.add_argument("--max-new-tokens", type=int, default=64, help="tokens generated (default: %(default)s)")
p.add_argument("--repeats", type=int, default=7, help="timed runs after one warm-up (default: %(default)s)")
args = p.parse_args()

policy, processor, records, _ = tiny_setup()
prompt = data.prompt_batch(processor, records[:args.prompts])
tok = processor.tokenizer
# the same decoding for both; min_new_tokens makes both produce every token (no early end of turn)
fixed = dict(num_return_sequences=args.group_size, max_new_tokens=args.max_new_tokens, do_sample=True, top_k=0,
             temperature=1.0, top_p=1.0, pad_token_id=tok.pad_token_id, eos_token_id=M.end_token_ids(tok),
             suppress_tokens=tok.convert_tokens_to_ids(M.VISION_TOKENS))


def bare():
    with torch.no_grad():
        policy.generate(**prompt, **fixed)


def ours():
    M.sample(policy, processor, prompt, group_size=args.group_size, max_new_tokens=args.max_new_tokens, seed=0)


torch.manual_seed(0)
bare(), ours()  # warm-up
times = {"bare": [], "ours": []}
for _ in range(args.repeats):  # interleaved, so that drifts of the machine hit both alike
    for name, fn in (("bare", bare), ("ours", ours)):
        t = time.perf_counter()
        fn()
        times[name].append(time.perf_counter() - t)
t_bare, t_ours = statistics.median(times["bare"]), statistics.median(times["ours"])
print(f"{args.prompts} prompts x G={args.group_size} x {args.max_new_tokens} new tokens, tiny model "
      f"({M.count_parameters(policy):,} parameters), {torch.get_num_threads()} threads")
print(f"bare generate: {t_bare:.3f} s   model.sample: {t_ours:.3f} s   ratio {t_ours / t_bare:.3f}")
print(f"generate_s={t_bare:.4f} sample_s={t_ours:.4f} ratio={t_ours / t_bare:.3f}")
