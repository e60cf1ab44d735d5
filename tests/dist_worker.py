"""Run under torchrun by tests/test_scale.py (gloo) and bench/gpu.sh (NCCL): each rank seeds differently, then
D.broadcast_parameters, a gradient sum and a metric sum; every rank writes what it holds to OUT-RANK.safetensors."""
import sys

import torch
from safetensors.torch import save_file

import distributed as D

out = sys.argv[1]
rank, world, device = D.init_distributed()
torch.manual_seed(rank)  # different weights on every rank before the broadcast
net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2)).to(device)
D.broadcast_parameters(net)
net(torch.full((1, 4), float(rank + 1), device=device)).sum().backward()
D.sync_grads(list(net.parameters()))
summed = D.all_reduce_sum({"one": 1.0, "rank": float(rank)})
save_file({**{k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()},
           "grad": net[0].weight.grad.cpu().contiguous(), "summed": torch.tensor([summed["one"], summed["rank"]])},
          f"{out}-{rank}.safetensors")
print(f"rank {rank}/{world} on {device}: {torch.distributed.get_backend()} broadcast, gradient sum and metric sum ok")
D.finish()
