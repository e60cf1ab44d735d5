"""bf16 mixed precision for MedAD-R1: autocast around forward passes, the dtype weights load in, the LM head in fp32.

--precision bf16 is torch's mixed precision: bf16 compute under autocast, fp32 weights wherever they are trained
(a bf16 weight of ~1e-2 is resolved to ~4e-5 and cannot take lr-1e-6 updates). Frozen weights that only a LoRA
adapts stay bf16. A frozen π_SFT copy runs in the policy's regime (fp32 weights, autocast), so that before the
first update π_θ and π_SFT are the same computation: r_t = 1 and KL = 0 exactly. The LM head runs in fp32 for every
model (policy, π_SFT, judge): log-probs and samples come from fp32 logits.

Imports nothing from the project, so it can be copied alone, as model.py can.
"""
import types
from contextlib import contextmanager

import torch



def weights_dtype(precision: str, trained: bool) -> torch.dtype:
    """The dtype to load weights in: fp32 unless --precision bf16 and the weights are frozen (a LoRA's base)."""
    return torch.bfloat16 if precision == "bf16" and not trained else torch.float32


def autocast(device, precision: str):
    """bf16 compute for forward passes under --precision bf16 (a no-op under fp32). Only around forward passes:
    autocast caches the bf16 casts of trained weights until its block exits, so a forward after an
    `optimizer.step()` inside the same block would still see the old weights."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16")


def fp32_logits(model):
    """Run the LM head in fp32, outside autocast, so that log-probs (and samples) come from fp32 logits. A bf16
    logit near 20 is resolved only to 0.125: π_θ / π_SFT would carry rounding noise of several percent, as large
    as a sizeable part of ε (MiniMax-M1 fixed its training/inference mismatch the same way). The head (tied to the
    embeddings in Qwen2.5-VL-3B) is kept in fp32; its state-dict names are unchanged."""
    head = model.get_output_embeddings()
    head.float()
    head.forward = types.MethodType(_fp32_linear, head)
    return model


MM_TO_FP32 = ("cuda",)  # devices whose matmul takes bf16 inputs to an fp32 result (torch.mm's out_dtype)


def _fp32_linear(self, hidden):
    """The head's matmul, the same op for π_θ and π_SFT whatever the grad mode and the input's layout (a [:, -1:]
    slice, logits_to_keep=1): a contiguous 2D product, so that log π_θ = log π_SFT to the bit before the first update.
    Under bf16 autocast on a GPU, bf16 inputs with fp32 accumulation into fp32 logits (tensor cores, ~10 TFLOP a
    micro-batch at 3B), the weight's bf16 copy made once per head_cast_once block; elsewhere fp32."""
    shape, device = hidden.shape[:-1], hidden.device.type
    bf16 = device in MM_TO_FP32 and torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.bfloat16
    with torch.autocast(device, enabled=False):
        logits = head_product(hidden.reshape(-1, hidden.shape[-1]), self.weight, bf16,
                              _bf16_weight(self) if bf16 else None)
    return logits.view(*shape, logits.shape[-1])


def head_product(flat: torch.Tensor, weight: torch.Tensor, bf16_inputs: bool, weight_bf16=None) -> torch.Tensor:
    """fp32 logits [N, V] of hidden states [N, H]: from bf16 inputs with fp32 accumulation (`weight_bf16`, the
    weight's bf16 copy, if one was made), or in fp32."""
    if bf16_inputs:
        return _Bf16Product.apply(flat, weight, _cast_bf16(weight) if weight_bf16 is None else weight_bf16)
    return torch.mm(flat.float().contiguous(), weight.float().t())


def _cast_bf16(weight: torch.Tensor) -> torch.Tensor:
    return weight.detach().bfloat16()


def _bf16_weight(head) -> torch.Tensor:
    """The head's weight in bf16: cast anew on each call, or once inside a head_cast_once block (again only if an
    optimizer step changed the weight there: its version moved)."""
    cache = getattr(head, "_bf16_cache", None)
    if cache is None:
        return _cast_bf16(head.weight)
    if cache.get("version") != head.weight._version:
        cache.update(version=head.weight._version, weight=_cast_bf16(head.weight))
    return cache["weight"]


@contextmanager
def head_cast_once(*models):
    """Inside the block, the bf16 copy of each model's LM head weight (151,936 x 2,048 at 3B, tied to the embeddings:
    1.2 GB read and 0.6 GB written a cast) is made once, at its first bf16 product, and shared by every later forward
    (each decode token, each micro-batch, every CUDA graph of the sampler); without it every forward casts. π_SFT with
    the adapter off shares the policy's head. A no-op off the GPU's bf16 path."""
    heads = {id(h): h for h in (m.get_output_embeddings() for m in models if m is not None)}.values()
    saved = [getattr(h, "_bf16_cache", None) for h in heads]
    for h, outer in zip(heads, saved):
        h._bf16_cache = outer if outer is not None else {}  # an enclosing block's copy serves this one too
    try:
        yield
    finally:
        for h, outer in zip(heads, saved):
            h._bf16_cache = outer


class _Bf16Product(torch.autograd.Function):
    """flat @ weight.T from bf16 inputs into fp32, forward and backward (torch.mm's out_dtype has no derivative);
    `weight` itself is passed for its gradient, its bf16 copy `w` for the products."""

    @staticmethod
    def forward(ctx, flat, weight, w):
        a = flat.bfloat16()
        ctx.save_for_backward(a, w)
        ctx.dtypes = flat.dtype, weight.dtype
        return _mm_fp32(a, w.t())

    @staticmethod
    def backward(ctx, grad):
        a, w = ctx.saved_tensors
        g = grad.bfloat16()
        grad_flat = _mm_fp32(g, w).to(ctx.dtypes[0]) if ctx.needs_input_grad[0] else None
        grad_weight = _mm_fp32(g.t(), a).to(ctx.dtypes[1]) if ctx.needs_input_grad[1] else None
        return grad_flat, grad_weight, None


def _mm_fp32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.mm(a, b, out_dtype=torch.float32)  # bf16 in, fp32 accumulated and out (CUDA only)
