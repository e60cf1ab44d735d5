"""One Con-GRPO policy step on fixed rollouts, each rank on its share: run alone or under torchrun (test helper)."""
import json
import sys

import torch
from safetensors.torch import save_file

import distributed as D
import model as M
import run
import train_grpo

ckpt, rollouts_path, out, loss_agg = sys.argv[1:5]
micro_batch = sys.argv[5] if len(sys.argv) > 5 else "4"
rank, world, device = D.init_distributed()
policy, _ = M.load_model(ckpt, device="cpu")
policy.requires_grad_(True)
roll = torch.load(rollouts_path, weights_only=True)
n = len(roll["prompts"]["input_ids"]) // world  # prompts per rank, each with its G completions
prompts, rows = M.take(roll["prompts"], slice(rank * n, (rank + 1) * n)), slice(rank * n * 4, (rank + 1) * n * 4)
args = train_grpo.parse_args(["--data", "-", "--micro-batch", micro_batch, "--group-size", "4", "--lr", "1e-3", "--loss-agg", loss_agg,
                              "--iterations", "2", "--ratio-ref", "old", "--beta", "0.1"])
params = [p for p in policy.parameters() if p.requires_grad]
optimizer = torch.optim.SGD(params, lr=args.lr)  # plain SGD: compares gradients, not Adam's g/sqrt(v) of float noise
scheduler = run.lr_schedule(optimizer, 10, 0.0, decay="constant")
args.precision = "fp32"
stats = train_grpo.policy_step(policy, policy, optimizer, scheduler, params, prompts, roll["ids"][rows],
                               roll["mask"][rows], roll["advantages"][rows], args)
if rank == 0:
    save_file(run.trainable_state(policy), out)
    json.dump(stats, open(out + ".stats.json", "w"))  # what train_grpo.py logs: the same for any split of the batch
D.finish()
